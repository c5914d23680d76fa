"""Waiting and reading the status file: one way to do each, for every tier.

Waiting is always a poll against a deadline, never a bare sleep; a reader of
the status file records every parse failure, because the file must be valid
JSON at every read.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def read_status_file(path: Path) -> dict[str, Any] | None:
    """The status file as JSON, or None while it does not exist yet."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class StatusReader:
    """Reads the status file continuously; keeps every distinct snapshot."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.errors: list[str] = []
        self.snapshots: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._last_raw = b""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            self.reads += 1
            if raw != self._last_raw:
                self._last_raw = raw
                try:
                    self.snapshots.append(json.loads(raw))
                except ValueError as exc:
                    self.errors.append(f"{exc}: {raw[:80]!r}")
            time.sleep(0.002)

    def start(self) -> StatusReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
