"""What a command opens: the one Config, and the daemon's ledger (never a new empty one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from daemon.config import Config, load_config
from daemon.errors import NotFound
from daemon.ledger.ledger import Ledger


def load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config) if args.config else None)


def open_ledger(config: Config) -> Ledger:
    """The daemon's ledger. A missing one is an error: opening would create an empty one."""
    if not config.ledger_path.exists():
        raise no_ledger(config)
    return Ledger(config.ledger_path)


def no_ledger(config: Config) -> NotFound:
    return NotFound(
        f"there is no ledger at {config.ledger_path}",
        hint="Start the daemon once (`imgtrain run` or `systemctl start imgtrain`),"
        " or pass the daemon's config with --config.",
    )
