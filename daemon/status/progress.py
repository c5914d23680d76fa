"""The one progress channel: phases report steps here; the status writer reads it.

Truthfulness rules kept here, in one place:
* a phase's percentage is its steps done / its steps, and 100 only when done;
* a batch is never shown completed while any phase has work left;
* the overall percentage and ETA weight each phase's steps by its measured
  cost per step (learned as batches run, remembered in the ledger), so the
  percentage tracks elapsed work time, not step counts;
* within a batch no percentage goes backwards; when new folders join the run
  `total_steps` grows and the overall percentage may drop (said in README).
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from daemon import __version__
from daemon.status.model import (
    DaemonInfo,
    ErrorEntry,
    ErrorInfo,
    LastBatch,
    OverallProgress,
    PhaseProgress,
    Phases,
    QueueCounts,
    Status,
    SystemInfo,
    Totals,
    honest_percentage,
    utcnow,
)
from daemon.vocab import IMAGE_PHASES, PHASES, DaemonStatus, PhaseState

if TYPE_CHECKING:
    from daemon.ledger.history import BatchSummary, ErrorRow

# Priors in seconds per step, used only until a phase has been measured once on
# this machine; the ledger remembers measured costs across restarts.
PRIOR_COST = {"embedding": 0.05, "faces": 0.1, "clustering": 0.5}
PRIOR_WEIGHT = 10.0  # measured steps needed to outweigh the remembered cost
THROUGHPUT_TAU = 10.0  # seconds; smoothing of images/s


class CostModel:
    """Seconds per step for each phase: remembered value blended with this batch's measurements."""

    def __init__(self, remembered: dict[str, float]) -> None:
        self.base = {p: remembered.get(p, PRIOR_COST[p]) for p in PHASES}
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.steps = dict.fromkeys(PHASES, 0)

    def observe(self, phase: str, seconds: float, steps: int) -> None:
        self.seconds[phase] += max(seconds, 0.0)
        self.steps[phase] += steps

    def cost(self, phase: str) -> float:
        return (self.base[phase] * PRIOR_WEIGHT + self.seconds[phase]) / (
            PRIOR_WEIGHT + self.steps[phase]
        )

    def settled(self) -> dict[str, tuple[float, int]]:
        """Costs worth remembering: phases measured in this batch."""
        return {p: (self.cost(p), self.steps[p]) for p in PHASES if self.steps[p]}


@dataclass
class PhaseCount:
    status: PhaseState = PhaseState.PENDING
    step: int = 0
    total: int = 0

    def view(self) -> PhaseProgress:
        total = self.total
        if self.status == PhaseState.COMPLETED or (
            total == 0 and self.status != PhaseState.PENDING
        ):
            pct = 100.0 if self.status == PhaseState.COMPLETED else 0.0
        else:
            pct = honest_percentage(self.step, total, self.step < total)
        return PhaseProgress(
            status=self.status, step=self.step, total_steps=total, percentage=round(pct, 1)
        )


@dataclass
class RunPlan:
    """Steps of the run's other batches (finished and waiting), per phase: [done, total]."""

    batch_ids: list[int] = field(default_factory=list)
    others: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in PHASES})


class Progress:
    """Live state of the daemon; thread-safe; `snapshot()` builds the Status."""

    def __init__(
        self,
        *,
        data_dir: str,
        costs: dict[str, float],
        max_errors: int = 50,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The clock times steps (costs, throughput); tests pass their own to stay exact.
        self._clock = clock
        self._lock = threading.RLock()
        self._data_dir = data_dir
        self._max_errors = max_errors
        self.started_at = utcnow()
        self.status = DaemonStatus.IDLE
        self.message = "starting"
        self.error: ErrorInfo | None = None
        self.costs = CostModel(costs)
        self.batch_id: int | None = None
        self.batch_name: str | None = None
        self.phase: str | None = None
        self.counts: dict[str, PhaseCount] = {}
        self.run = RunPlan()
        self._floor = 0.0
        self._floor_total = 0
        self._last_report = self._clock()
        self._throughput: float | None = None
        self._tp_at: float | None = None
        self.queue = QueueCounts()
        self.totals = Totals()
        self.last_batch: LastBatch | None = None
        self.errors: list[ErrorEntry] = []
        self._ledger_errors: list[ErrorEntry] = []
        self._noted_errors: list[ErrorEntry] = []
        self._proc = _process()
        self._device: str | None = None
        self._onnx_providers: list[str] | None = None

    # -- daemon state --------------------------------------------------------
    def set_state(self, status: DaemonStatus, message: str, error: ErrorInfo | None = None) -> None:
        with self._lock:
            self.status, self.message, self.error = status, message, error

    def busy(self) -> bool:
        return self.status in (DaemonStatus.TRAINING, DaemonStatus.PAUSED)

    def set_queue(self, counts: dict[str, int], paused: bool) -> None:
        with self._lock:
            running = counts.get("running", 0)
            self.queue = QueueCounts(
                waiting=counts.get("waiting", 0),
                running=0 if paused else running,
                completed=counts.get("completed", 0),
                failed=counts.get("failed", 0),
                paused=running + counts.get("waiting", 0) if paused else 0,
                cancelled=counts.get("cancelled", 0),
            )

    def set_accelerators(self, device: str | None, onnx_providers: list[str] | None) -> None:
        """Where the loaded models run, for the status file's `system` block."""
        with self._lock:
            self._device, self._onnx_providers = device, onnx_providers

    def set_totals(self, totals: dict[str, int]) -> None:
        with self._lock:
            self.totals = Totals(**totals)

    def set_errors(self, rows: list[ErrorRow]) -> None:
        with self._lock:
            self._ledger_errors = [
                ErrorEntry(
                    at=r.at, code=r.code, message=r.message, file=r.file, batch_id=r.batch_id
                )
                for r in rows[: self._max_errors]
            ]
            self._merge_errors()

    def note_error(self, code: str, message: str, file: str | None = None) -> None:
        """An error the ledger could not take (its disk is full) still reaches the status."""
        with self._lock:
            entry = ErrorEntry(at=utcnow(), code=code, message=message, file=file)
            self._noted_errors = [entry, *self._noted_errors][: self._max_errors]
            self._merge_errors()

    def _merge_errors(self) -> None:
        both = [*self._ledger_errors, *self._noted_errors]
        self.errors = sorted(both, key=lambda e: e.at, reverse=True)[: self._max_errors]

    def set_last_batch(self, s: BatchSummary) -> None:
        with self._lock:
            self.last_batch = LastBatch(**dataclasses.asdict(s))

    # -- batches -------------------------------------------------------------
    def set_run(self, plan: RunPlan) -> None:
        with self._lock:
            self.run = plan

    def begin_batch(self, batch_id: int, name: str, counts: dict[str, PhaseCount]) -> None:
        with self._lock:
            self.batch_id, self.batch_name = batch_id, name
            self.counts = counts
            # The first phase with work left is what the batch is doing from its
            # first moment (decoding for it), so a reader never sees a batch without one.
            self.phase = next(
                (
                    p
                    for p in PHASES
                    if counts[p].status not in (PhaseState.SKIPPED, PhaseState.COMPLETED)
                ),
                None,
            )
            self._floor = 0.0
            self._floor_total = 0
            self._last_report = self._clock()

    def phase_started(self, phase: str, total: int | None = None) -> None:
        with self._lock:
            count = self.counts[phase]
            if total is not None:
                count.total = total
            if count.status == PhaseState.PENDING:
                count.status = PhaseState.RUNNING
            self.phase = phase
            self._last_report = self._clock()

    def phase_finished(self, phase: str, status: PhaseState) -> None:
        with self._lock:
            count = self.counts[phase]
            if status == PhaseState.COMPLETED and count.step < count.total:
                raise AssertionError(f"{phase} marked completed at {count.step}/{count.total}")
            count.status = status

    def advance(self, phase: str, n: int = 1) -> None:
        """`n` steps of `phase` are done; the wall time since the last report was theirs."""
        now = self._clock()
        with self._lock:
            count = self.counts[phase]
            n = min(n, count.total - count.step)  # never report more than exists
            if n <= 0:
                return
            count.step += n
            self.costs.observe(phase, now - self._last_report, n)
            if phase == self._last_image_phase():
                self._observe_throughput(now, n)
            self._last_report = now

    def end_batch(self) -> None:
        with self._lock:
            self.batch_id = self.batch_name = self.phase = None
            self.counts = {}

    def _last_image_phase(self) -> str | None:
        active = [p for p in IMAGE_PHASES if self.counts[p].status != PhaseState.SKIPPED]
        return active[-1] if active else None

    def _observe_throughput(self, now: float, n: int) -> None:
        """Exponentially smoothed images/s, with a time constant of THROUGHPUT_TAU seconds."""
        if self._tp_at is None:  # the first report only starts the clock
            self._tp_at = now
            return
        dt = max(now - self._tp_at, 1e-3)
        rate = n / dt
        alpha = 1.0 - math.exp(-dt / THROUGHPUT_TAU)
        prev = self._throughput
        self._throughput = rate if prev is None else prev + alpha * (rate - prev)
        self._tp_at = now

    # -- building the status ---------------------------------------------------
    def _overall(self) -> tuple[int, int, OverallProgress]:
        done_steps = total_steps = 0
        done_work = total_work = 0.0
        for p in PHASES:
            cost = self.costs.cost(p)
            o_done, o_total = self.run.others[p]
            c = self.counts.get(p)
            c_done, c_total = (c.step, c.total) if c else (0, 0)
            done_steps += o_done + c_done
            total_steps += o_total + c_total
            done_work += (o_done + c_done) * cost
            total_work += (o_total + c_total) * cost
        if total_steps == 0:
            return 0, 0, OverallProgress()
        if total_steps != self._floor_total:  # folders joined: the percentage may drop
            self._floor_total = total_steps
            self._floor = 0.0
        pct = honest_percentage(done_work, total_work, done_steps < total_steps)
        pct = max(pct, self._floor)
        self._floor = pct
        remaining = max(total_work - done_work, 0.0)
        eta_at = utcnow() + timedelta(seconds=remaining)
        return (
            done_steps,
            total_steps,
            OverallProgress(
                percentage=round(pct, 1), eta_seconds=round(remaining, 1), eta_at=eta_at
            ),
        )

    def snapshot(self) -> Status:
        with self._lock:
            current_step, total_steps, overall = self._overall()
            in_batch = self.batch_id is not None
            phases = None
            batch_step = batch_total = None
            if in_batch:
                phases = Phases(**{p: self.counts[p].view() for p in PHASES})
                batch_step = sum(self.counts[p].step for p in PHASES)
                batch_total = sum(self.counts[p].total for p in PHASES)
            number = size = None
            if self.run.batch_ids:
                size = len(self.run.batch_ids)
                if in_batch and self.batch_id in self.run.batch_ids:
                    number = self.run.batch_ids.index(self.batch_id) + 1
            return Status(
                status=self.status,
                message=self.message,
                updated_at=utcnow(),
                daemon=DaemonInfo(
                    pid=os.getpid(),
                    version=__version__,
                    started_at=self.started_at,
                    hostname=socket.gethostname(),
                ),
                error=self.error,
                current_file=self.batch_name,
                batch_id=self.batch_id,
                batch_number=number,
                batch_queue_size=size,
                batch_step=batch_step,
                batch_total_steps=batch_total,
                phase=self.phase if in_batch else None,
                phases=phases,
                current_step=current_step if total_steps else None,
                total_steps=total_steps if total_steps else None,
                overall_progress=overall,
                throughput=None if self._throughput is None else round(self._throughput, 3),
                queue=self.queue,
                last_batch=self.last_batch,
                errors=list(self.errors),
                totals=self.totals,
                system=self._system(),
            )

    def _system(self) -> SystemInfo:
        import psutil

        try:
            disk = psutil.disk_usage(self._data_dir).free
        except OSError:
            disk = None
        with self._proc.oneshot():
            return SystemInfo(
                rss_bytes=self._proc.memory_info().rss,
                cpu_percent=self._proc.cpu_percent(interval=None),
                disk_free_bytes=disk,
                device=self._device,
                onnx_providers=self._onnx_providers,
            )


def _process():
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(interval=None)  # first call primes the counter
    return proc
