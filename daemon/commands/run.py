"""`imgtrain run`: the long-running daemon (what systemd starts)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the daemon: watch the inbox and process batches")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.service.loop import run_daemon

    return run_daemon(Path(args.config) if args.config else None)
