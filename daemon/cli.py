"""The `imgtrain` command: parses arguments and dispatches to one module per action.

Exit codes: 0 ok, 1 an error (printed as one line: code, message, what to
do), 2 bad usage, 78 invalid configuration (EX_CONFIG).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from daemon import __version__
from daemon.errors import ConfigError, ImgtrainError

# 2 (bad usage) is argparse's own; 78 is EX_CONFIG from sysexits.h, which the unit
# names in RestartPreventExitStatus.
EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 78

# Each module in daemon/commands/ offers add_parser(subparsers) and run(args) -> int.
COMMANDS = (
    "run",
    "status",
    "search",
    "people",
    "duplicates",
    "queue",
    "reindex",
    "models",
    "doctor",
    "worker",
    "workers",
)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name (`imgtrain run -c X`).

    The top-level parser holds the defaults; each command's copy is SUPPRESSed,
    so a value given before the command is not reset by the command's parser,
    and one given after it wins.
    """
    keep = None if top else argparse.SUPPRESS
    parser.add_argument(
        "--config",
        "-c",
        default=keep,
        metavar="PATH",
        help="config file (default: $IMGTRAIN_CONFIG, else ./config.yaml)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"imgtrain {__version__}",
        help=argparse.SUPPRESS if not top else "print the version and exit",
    )


def _command_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every command and sub-command parser below `parser` (aliases counted once)."""
    found: dict[int, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in found:
                    found[id(child)] = child
                    for grandchild in _command_parsers(child):
                        found.setdefault(id(grandchild), grandchild)
    return list(found.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgtrain",
        description="Photo-ingest daemon: CLIP search, faces and people for a photo inbox.",
    )
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"daemon.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"daemon.commands.{name}":
                raise
            continue
        module.add_parser(sub)
    for child in _command_parsers(parser):
        _add_global_options(child, top=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or EXIT_OK)
    except ConfigError as exc:
        print(f"imgtrain: {exc.code}: {exc.message}\n  -> {exc.hint}", file=sys.stderr)
        return EXIT_CONFIG
    except ImgtrainError as exc:
        print(f"imgtrain: {exc.code}: {exc.message}\n  -> {exc.hint}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
