"""Shared output of the read commands: the console, JSON, bars and states.

(`duration`, `iso`, `local_time` and `size` are `daemon.humanize`'s, offered here too.)

Human output goes through one rich Console. When stdout is not a terminal
(a pipe, a file, a test) rich would wrap at 80 columns and cut long photo
paths in half, so the console is widened there: lines stay greppable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from daemon.humanize import duration, iso, local_time, size
from daemon.redact import redact

PIPE_WIDTH = 200
__all__ = ["duration", "iso", "local_time", "size"]  # and everything defined below

STATE_STYLE = {
    "waiting": "cyan",
    "claiming": "cyan",
    "running": "bold blue",
    "training": "bold blue",
    "completed": "green",
    "idle": "green",
    "failed": "bold red",
    "error": "bold red",
    "cancelled": "yellow",
    "removing": "yellow",
    "removed": "dim",
    "paused": "yellow",
    "stopped": "bold red",
    "pending": "dim",
    "skipped": "dim",
}


def console() -> Console:
    out = Console(highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out = Console(highlight=False, width=PIPE_WIDTH, soft_wrap=True)
    return out


def quiet_logs() -> None:
    """Keep library chatter (torch, open_clip, chromadb) off a command's output.

    The commands say what matters themselves (random CLIP weights, model
    errors); only errors from the libraries still reach stderr.
    """
    logging.basicConfig(level=logging.ERROR, format="imgtrain: %(name)s: %(message)s")


def add_json_flag(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    # A sub-command's copy of the flag must not reset one given before it
    # (`imgtrain queue --json stats`), so only the outer parser has a default.
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if sub else False,
        help="print JSON for scripts instead of text",
    )


def plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


def print_json(data: Any) -> None:
    print(redact(json.dumps(plain(data), indent=2, ensure_ascii=False)))


def table(*heads: str, right: Iterable[str] = (), wrap: Iterable[str] = ()) -> Table:
    """The commands' table: bold heads, no box; the `right` columns are right-aligned (numbers),
    only the `wrap` columns may wrap (a long folder or path), so ids and numbers stay whole."""
    right, wrap = set(right), set(wrap)
    t = Table(box=None, header_style="bold", pad_edge=False)
    for head in heads:
        t.add_column(head, justify="right" if head in right else "left", no_wrap=head not in wrap)
    return t


def bar(done: float, total: float, width: int = 30) -> Text:
    """A bar that reads the same in a terminal, a pipe and a README."""
    frac = min(max(done / total, 0.0), 1.0) if total else 0.0
    full = int(frac * width)  # floor: a bar is full only when the work is
    return Text.assemble(
        ("█" * full, "green" if frac >= 1 else "blue"), ("░" * (width - full), "dim")
    )


def styled(state: str) -> str:
    style = STATE_STYLE.get(state, "")
    return f"[{style}]{state}[/]" if style else state
