"""What a command opens: the one Config, the daemon's ledger and store (never new empty ones)."""

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


def require_store(config: Config, what: str = "") -> None:
    """An embedded store must exist already: opening it would create an empty one.

    `what` ends the message (e.g. ": nothing to re-index"); a Chroma server is reached
    when the command opens it.
    """
    if not config.store.url and not config.chroma_path.exists():
        raise NotFound(
            f"there is no vector store at {config.chroma_path}{what}",
            hint="Start the daemon and drop photos into the inbox first,"
            " or pass the daemon's config with --config.",
        )
