"""The status file's `reindex` object: the latest re-index, its counts and its ETA.

Counts come from the ledger's row (what the daemon recorded after each chunk
it stored); the rate is measured here, over re-index work only (time spent
on batches in between is not its), smoothed like the batches' throughput.
The percentage is 100 only once the re-index has completed.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from daemon.ledger.reindexes import ReindexRow
from daemon.status.model import ReindexProgress, honest_percentage, utcnow
from daemon.vocab import ReindexState

RATE_TAU = 10.0  # seconds of work over which the rate is smoothed


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class ReindexTracker:
    """Thread-safe; the service updates it, the status writer reads `view()`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.row: ReindexRow | None = None
        self.working = False  # re-index work in progress now (the status file is then busy)
        self._rate: float | None = None
        self._at: float | None = None

    def show(self, row: ReindexRow | None) -> None:
        """The latest job as the ledger has it."""
        with self._lock:
            if row is None or self.row is None or row.reindex_id != self.row.reindex_id:
                self._rate = None
            self.row = row
            if row is None or row.state != ReindexState.RUNNING:
                self.working, self._at = False, None

    def begin(self) -> None:
        """A spell of re-index work starts."""
        with self._lock:
            self.working, self._at = True, self._clock()

    def end(self) -> None:
        with self._lock:
            self.working, self._at = False, None

    def advanced(self, row: ReindexRow, embedded: int) -> None:
        """`embedded` images were stored since the last call (or `begin`)."""
        now = self._clock()
        with self._lock:
            if self._at is not None and embedded > 0:
                dt = max(now - self._at, 1e-3)
                rate, prev = embedded / dt, self._rate
                alpha = 1.0 - math.exp(-dt / RATE_TAU)
                self._rate = rate if prev is None else prev + alpha * (rate - prev)
            self._at = now
            self.row = row

    def view(self) -> ReindexProgress | None:
        with self._lock:
            r = self.row
            if r is None:
                return None
            running = r.state == ReindexState.RUNNING
            total = max(r.total, 0)
            done = min(r.done, total) if total else r.done
            if r.state == ReindexState.COMPLETED:
                pct = 100.0
            else:  # a cancelled or failed one is not complete either
                pct = honest_percentage(done, total, True) if total else 0.0
            eta = None
            if running and self._rate:
                eta = round(max(total - done, 0) / self._rate, 1)
            return ReindexProgress(
                model=r.model,
                from_model=r.from_model,
                state=str(r.state),
                done=done,
                total=total,
                percentage=round(pct, 1),
                eta_seconds=eta,
                eta_at=None if eta is None else utcnow() + timedelta(seconds=eta),
                started_at=_ts(r.started_at),
                finished_at=_ts(r.finished_at),
                message=r.message,
            )
