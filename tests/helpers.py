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


def contradictions(s: dict[str, Any]) -> list[str]:
    """Everything in one status write that contradicts the rest of it; [] when it is sound."""
    out: list[str] = []
    status, queue, batch = s["status"], s["queue"], s["batch_id"]
    if status == "training" and batch is None:
        out.append("training without a current batch")
    if status == "training" and (s["phase"] is None or s["phases"] is None):
        out.append("training without a phase")
    if status == "idle" and (queue["waiting"] or queue["running"]):
        out.append(f"idle with {queue['waiting']} waiting and {queue['running']} running")
    if status == "idle" and batch is not None:
        out.append("idle with a current batch")
    if batch is None and (s["phases"] is not None or s["phase"] or s["batch_step"] is not None):
        out.append("batch fields without a batch")
    if status == "idle" and s.get("run") is not None:
        out.append("idle with a run under way")
    if s.get("stalled") and (status != "training" or not s.get("stall_reason")):
        out.append("stalled while not training, or without a reason")
    if (s["current_step"] is None) != (s["total_steps"] is None):
        out.append("current_step and total_steps: one null, not the other")
    elif s["total_steps"] is not None and s["current_step"] > s["total_steps"]:
        out.append("more steps done than exist")
    overall = s["overall_progress"]
    if overall["percentage"] is not None:
        if overall["percentage"] >= 100 and s["current_step"] != s["total_steps"]:
            out.append("overall 100% with steps left")
        if not 0 <= overall["percentage"] <= 100:
            out.append(f"overall percentage {overall['percentage']}")
    if overall["eta_seconds"] is not None and overall["eta_seconds"] < 0:
        out.append("negative ETA")
    if status in ("error", "paused") and (
        overall["eta_seconds"] is not None
        or any(ph.get("eta_seconds") for ph in (s["phases"] or {}).values())
    ):
        out.append(f"an ETA while {status}: nothing moves until that ends")
    for name, ph in (s["phases"] or {}).items():
        left = ph["step"] < ph["total_steps"]
        if left and (ph["status"] == "completed" or ph["percentage"] >= 100):
            out.append(f"{name} completed or at 100% with steps left")
        if (ph.get("eta_seconds") or 0) < 0:
            out.append(f"{name}: negative ETA")
    size = s["batch_queue_size"]
    if batch is not None and size is not None and not 1 <= (s["batch_number"] or 0) <= size:
        out.append("the current batch is not in the run")
    run = s.get("run")
    if run is not None:
        if run["images_done"] > run["images_total"] or run["batches_done"] > run["batches_total"]:
            out.append("the run has more done than it holds")
        if batch is not None and run["batches_done"] >= run["batches_total"]:
            out.append("a current batch, but every batch of the run is done")
    return out


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

    def stop(self, *, check: bool = True) -> None:
        """Stop reading; with `check`, every snapshot seen must be free of contradictions."""
        self._stop.set()
        self._thread.join(timeout=5)
        if check:
            found = [(c, s) for s in self.snapshots for c in contradictions(s)]
            assert not found, f"{len(found)} contradictions, the first: {found[0]}"
