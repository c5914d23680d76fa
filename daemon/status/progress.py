"""The one progress channel: phases report steps here; the status writer reads it.

Truthfulness rules kept here, in one place:
* a phase's percentage is its steps done / its steps, and 100 only when done;
* a batch is never shown completed while any phase has work left;
* the ETA comes from what the remaining work is made of (`daemon.status.estimate`),
  and the overall percentage is the run's work seconds spent over spent plus the
  ETA, so it tracks the share of elapsed work time, not step counts; it reads
  100 only when every step is done;
* time in a step is credited only up to what the step is expected to take: a
  stalled step does not creep towards 100%, and past `stall_seconds` it is said;
* within a batch no percentage goes backwards, nor the overall one from one batch
  to the next; when new folders join the run `total_steps` grows and the overall
  percentage may drop (said in README).

Every write is consistent with itself: `snapshot` is given what the ledger's
queue holds and shows `training` only with a batch, `idle` only with nothing
queued (see `daemon.service.loop._build_status`).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING

import numpy as np

from daemon.status.estimate import BatchWork, Estimator, PhaseWork
from daemon.status.model import (
    ErrorEntry,
    ErrorInfo,
    LastBatch,
    OverallProgress,
    QueueCounts,
    Status,
    Totals,
    honest_percentage,
    utcnow,
)
from daemon.status.outlook import Outlook, build_status, outlook
from daemon.status.plan import BatchPlan, Counters, PhaseCount, RunPlan, Timing
from daemon.vocab import IMAGE_PHASES, PHASES, DaemonStatus, PhaseState, is_batch_phase

__all__ = ["BatchPlan", "PhaseCount", "Progress", "RunPlan"]

if TYPE_CHECKING:
    from daemon.ledger.history import BatchSummary, ErrorRow

THROUGHPUT_TAU = 10.0  # seconds; smoothing of images/s
STALL_FLOOR = 60.0  # seconds: a stall is never called sooner than this (unless configured)
STALL_FACTOR = 10.0  # ... nor sooner than this many times the expected step
DONE = (PhaseState.SKIPPED, PhaseState.COMPLETED)


class Progress:
    """Live state of the daemon; thread-safe; `snapshot()` builds the Status."""

    def __init__(
        self,
        *,
        data_dir: str,
        costs: dict[str, float] | None = None,
        memory: dict[str, str] | None = None,
        max_errors: int = 50,
        clock: Callable[[], float] = time.monotonic,
        chunk: int = 32,
        stall_seconds: float | None = None,
    ) -> None:
        # The clock times steps (costs, stalls, throughput); tests pass their own to stay exact.
        self._clock = clock
        # One lock for the daemon's state: the service holds it around a transition
        # (a batch finishing, the run ending) so no write sees half of one.
        self.lock = threading.RLock()
        self._data_dir = data_dir
        self._max_errors = max_errors
        self.stall_seconds = stall_seconds
        self.started_at = utcnow()
        self.status = DaemonStatus.IDLE
        self.message = "starting"
        self.idle_message = "Idle"
        self.error: ErrorInfo | None = None
        self.costs = Estimator(costs, chunk)
        self.costs.load(memory or {})
        self.chunk = chunk
        self.batch_id: int | None = None
        self.batch_name: str | None = None
        self.phase: str | None = None
        self.counts: dict[str, PhaseCount] = {}
        self.work = BatchWork()
        self.run = RunPlan()
        self.counters = Counters()
        self._floor = 0.0
        self._floor_total = 0
        self.timing = Timing(last_event=self._clock())
        self.throughput: float | None = None
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
        with self.lock:
            now, t = self._clock(), self.timing
            if status == DaemonStatus.PAUSED and t.paused_since is None:
                t.paused_since = now
            elif status != DaemonStatus.PAUSED and t.paused_since is not None:
                # Paused time is nobody's work: not a step's cost, not a stall.
                gap = now - t.paused_since
                t.paused_total += gap
                t.last_event += gap
                t.paused_since = None
            self.status, self.message, self.error = status, message, error

    def busy(self) -> bool:
        return self.status in (DaemonStatus.TRAINING, DaemonStatus.PAUSED)

    def set_queue(self, counts: dict[str, int], paused: bool) -> None:
        with self.lock:
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
        with self.lock:
            self._device, self._onnx_providers = device, onnx_providers

    def set_totals(self, totals: dict[str, int]) -> None:
        with self.lock:
            self.totals = Totals(**totals)

    def set_errors(self, rows: list[ErrorRow]) -> None:
        with self.lock:
            self._ledger_errors = [
                ErrorEntry(
                    at=r.at, code=r.code, message=r.message, file=r.file, batch_id=r.batch_id
                )
                for r in rows[: self._max_errors]
            ]
            self._merge_errors()

    def note_error(self, code: str, message: str, file: str | None = None) -> None:
        """An error the ledger could not take (its disk is full) still reaches the status."""
        with self.lock:
            entry = ErrorEntry(at=utcnow(), code=code, message=message, file=file)
            self._noted_errors = [entry, *self._noted_errors][: self._max_errors]
            self._merge_errors()

    def _merge_errors(self) -> None:
        both = [*self._ledger_errors, *self._noted_errors]
        self.errors = sorted(both, key=lambda e: e.at, reverse=True)[: self._max_errors]

    def set_last_batch(self, s: BatchSummary) -> None:
        with self.lock:
            self.last_batch = LastBatch(**dataclasses.asdict(s))

    # -- batches -------------------------------------------------------------
    def set_run(self, plan: RunPlan) -> None:
        with self.lock:
            self.run = plan

    def begin_batch(
        self,
        batch_id: int,
        name: str,
        counts: dict[str, PhaseCount],
        work: BatchWork | None = None,
    ) -> None:
        with self.lock:
            self.batch_id, self.batch_name = batch_id, name
            self.counts = counts
            self.work = work or BatchWork()
            # The first phase with work left is what the batch is doing from its
            # first moment (decoding for it), so a reader never sees a batch without one.
            self.phase = next((p for p in PHASES if counts[p].status not in DONE), None)
            # The floor is kept: the run's percentage does not drop at a hand-over
            # either (it is reset only when the run's total changes).
            now = self._clock()
            self.timing = Timing(began=now, last_event=now)
            self.costs.begin_batch()

    def phase_started(self, phase: str, total: int | None = None) -> None:
        with self.lock:
            count = self.counts[phase]
            if total is not None:
                count.total = total
            if count.status == PhaseState.PENDING:
                count.status = PhaseState.RUNNING
            self.phase = phase
            self.timing.last_event = self._clock()

    def phase_finished(self, phase: str, status: PhaseState) -> None:
        with self.lock:
            count = self.counts[phase]
            if status == PhaseState.COMPLETED and count.step < count.total:
                raise AssertionError(f"{phase} marked completed at {count.step}/{count.total}")
            count.status = status

    def advance(
        self, phase: str, n: int = 1, *, faces: int | None = None, timed: bool = True
    ) -> None:
        """`n` steps of `phase` are done (with `faces` found in them, when the phase finds
        faces); the wall time since the last report was theirs. `timed=False`: steps
        that took no time of their own (a photo that failed to decode), whose time goes
        to the next report."""
        now = self._clock()
        with self.lock:
            count = self.counts[phase]
            n = min(n, count.total - count.step)  # never report more than exists
            if n <= 0:
                return
            t = self.timing
            work = self._work(phase, n, faces)
            t.consumed[phase] = t.consumed.get(phase, 0) + n
            count.step += n
            if not timed:
                self.counters.phase_steps[phase] += n
                return
            t.last_n[phase] = n
            seconds = max(now - t.last_event, 0.0)
            if t.reports:
                self.costs.observe(phase, work, seconds, t.decode_cpu)
                t.attributed += seconds
            else:
                # The batch's first report also paid for starting it (nothing decoded
                # ahead, models cold): not a rate to plan by. Its work is worth what the
                # model says; the rest is the batch's overhead.
                t.attributed += min(seconds, self.costs.predict(phase, work, t.decode_cpu))
            t.decode_cpu = 0.0
            t.reports += 1
            self.counters.phase_seconds[phase] += seconds
            self.counters.phase_steps[phase] += n
            self.counters.faces += faces or 0
            if phase == self._last_image_phase():
                self.counters.images += n
                self._observe_throughput(now, n)
            t.last_event = now

    def decoded(self, image_id: int, cpu_seconds: float, *, ok: bool = True) -> None:
        """A decode worker took `cpu_seconds` of CPU for this image (decode + prepare);
        `ok=False`: it failed, and its time says nothing about what a photo costs."""
        with self.lock:
            t = self.timing
            t.decode_cpu += cpu_seconds
            features = self.work.by_image.get(image_id)
            if features is not None:
                t.decoded = t.decoded + np.asarray(features, dtype=float)
                t.decoded_n += 1
                if ok:
                    self.costs.observe_decode(features, cpu_seconds)

    def end_batch(self, *, learn: bool = False) -> None:
        """The batch is over; with `learn`, it ran to its end and teaches the overhead."""
        with self.lock:
            t = self.timing
            if learn and t.began is not None and t.reports:
                active = self._clock() - t.began - t.paused_total
                self.costs.end_batch(active - t.attributed)
            else:
                self.costs.end_batch(None)
            self.batch_id = self.batch_name = self.phase = None
            self.counts = {}
            self.work = BatchWork()
            self.timing = Timing(last_event=self._clock())

    @property
    def batch_clock(self) -> float | None:
        return self.timing.began

    def work_of(self, phase: str, n: float) -> PhaseWork:
        """The next `n` steps of `phase` in the current batch, as the estimator sees them."""
        return self._work(phase, n, None)

    def memory(self) -> dict[str, str]:
        with self.lock:
            return self.costs.memory()

    def _work(self, phase: str, n: float, faces: int | None) -> PhaseWork:
        """What `n` steps of `phase` are made of (decoding is counted on its own)."""
        if is_batch_phase(phase):
            total = self.counts[phase].total or 1
            return PhaseWork(n, self._batch_faces() * n / total)
        return PhaseWork(n, None if faces is None else float(faces))

    def undecoded(self) -> tuple[np.ndarray, int]:
        """Decode features of the current batch's photos not decoded yet, and how many."""
        left = np.maximum(self.work.decode - self.timing.decoded, 0.0)
        return left, max(len(self.work.by_image) - self.timing.decoded_n, 0)

    def _batch_faces(self) -> float:
        """Faces the batch will have had found by the time it is clustered."""
        faces = self.counts.get("faces")
        left = 0 if faces is None else max(faces.total - faces.step, 0)
        return self.costs.batch_faces + self.costs.expected_faces() * left

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
        prev = self.throughput
        self.throughput = rate if prev is None else prev + alpha * (rate - prev)
        self._tp_at = now

    def _overall(self, out: Outlook) -> tuple[int, int, OverallProgress]:
        done_steps = total_steps = 0
        for p in PHASES:
            o_done, o_total = out.others.steps[p]
            c = self.counts.get(p)
            done_steps += o_done + (c.step if c else 0)
            total_steps += o_total + (c.total if c else 0)
        if total_steps == 0:
            return 0, 0, OverallProgress()
        if total_steps != self._floor_total:  # folders joined: the percentage may drop
            self._floor_total = total_steps
            self._floor = 0.0
        if done_steps >= total_steps:
            pct, eta = 100.0, 0.0
        else:
            whole = out.spent + out.eta
            pct = honest_percentage(out.spent, whole, True) if whole > 0 else 0.0
            eta = out.eta
        pct = max(pct, self._floor)
        self._floor = pct
        return (
            done_steps,
            total_steps,
            OverallProgress(
                percentage=round(pct, 1),
                eta_seconds=round(eta, 1),
                eta_at=utcnow() + timedelta(seconds=eta),
            ),
        )

    def stall_limit(self, step_expected: float) -> float:
        if self.stall_seconds is not None:
            return self.stall_seconds
        return max(STALL_FLOOR, STALL_FACTOR * step_expected)

    # -- building the status ---------------------------------------------------
    def snapshot(
        self,
        *,
        queued: bool = False,
        paused: bool = False,
        upcoming: tuple[int, str, dict[str, PhaseCount]] | None = None,
    ) -> Status:
        """The status now. `queued`: the ledger holds waiting or running batches;
        `upcoming`: the one the daemon takes next, shown while no batch has begun."""
        with self.lock:
            out = outlook(self, self._clock())
            current_step, total_steps, overall = self._overall(out)
            return build_status(
                self,
                out,
                current_step=current_step,
                total_steps=total_steps,
                overall=overall,
                queued=queued,
                paused=paused,
                upcoming=upcoming,
            )


def _process():
    import psutil

    proc = psutil.Process()
    proc.cpu_percent(interval=None)  # first call primes the counter
    return proc
