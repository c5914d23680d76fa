"""Logging for journald: one event per line, batch id on every line about a batch.

Under systemd (JOURNAL_STREAM set) each line starts with a syslog priority
prefix like `<4>` so `journalctl -p warning` filters properly, and without a
timestamp, which journald adds itself.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from daemon.redact import redact

current_batch: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "current_batch", default=None
)

_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        batch = current_batch.get()
        where = f" batch={batch}" if batch is not None else ""
        message = record.getMessage().replace("\n", "\\n")
        if record.exc_info:
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        message = redact(message)  # a library's error may quote a URL with a password
        if self.journald:
            return f"<{_PRIORITY.get(record.levelname, 6)}>{record.name}{where}: {message}"
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
        return f"{stamp} {record.levelname:<7} {record.name}{where}: {message}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter (chromadb, httpx) stays out of the journal unless debugging.
    for noisy in ("chromadb", "httpx", "urllib3", "PIL", "watchdog", "numba"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


@contextmanager
def batch_context(batch_id: int) -> Iterator[None]:
    token = current_batch.set(batch_id)
    try:
        yield
    finally:
        current_batch.reset(token)


def log_writer_stats(writer: Any, seconds: float) -> None:
    """What keeping the status file cost, said once at shutdown."""
    logging.getLogger("imgtrain").info(
        "status file: %d writes, %.2f ms each, %.3f%% of %.0f s running",
        writer.writes,
        1000 * writer.write_seconds / max(writer.writes, 1),
        100 * writer.write_seconds / max(seconds, 1e-9),
        seconds,
    )
