"""One module per `imgtrain` action (borgmatic style): add_parser(subparsers) and run(args)."""
