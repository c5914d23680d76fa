"""One status write, assembled from the progress channel so that it never contradicts itself.

The daemon's own state lags the ledger by a moment at every hand-over (a folder
claimed while the main loop sleeps, a batch finished before the next begins,
`imgtrain queue retry` from another process). What is shown follows the
ledger's queue as read under the same lock:

* `training` only with a current batch: between batches, or before the main
  loop has begun the next one, that is the batch it takes next ("Starting");
* `idle` only with nothing waiting or running: with work queued the daemon
  says it is starting it (or paused, when the queue is held);
* a stall (no step for `status.stall_seconds`) says which batch, phase and file.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import numpy as np

from daemon import __version__, humanize
from daemon.status.estimate import BatchWork, Estimator, PhaseWork
from daemon.status.model import (
    DaemonInfo,
    ErrorEntry,
    ErrorInfo,
    LastBatch,
    OverallProgress,
    Phases,
    QueueCounts,
    RunInfo,
    Status,
    SystemInfo,
    Totals,
    utcnow,
)
from daemon.status.plan import Others, PhaseCount, RunPlan, Timing, others
from daemon.vocab import IMAGE_PHASES, PHASES, DaemonStatus, PhaseState, is_batch_phase


class Progress(Protocol):
    """What a write reads of the progress channel (`daemon.status.progress.Progress`),
    named here so that the channel can import this module and not the reverse."""

    status: DaemonStatus
    message: str
    idle_message: str
    error: ErrorInfo | None
    started_at: Any
    costs: Estimator
    chunk: int
    batch_id: int | None
    batch_name: str | None
    phase: str | None
    counts: dict[str, PhaseCount]
    work: BatchWork
    run: RunPlan
    timing: Timing
    throughput: float | None
    queue: QueueCounts
    totals: Totals
    last_batch: LastBatch | None
    errors: list[ErrorEntry]
    _data_dir: str
    _proc: Any
    _device: str | None
    _onnx_providers: list[str] | None

    def batch_clock(self) -> float | None: ...
    def work_of(self, phase: str, n: float) -> PhaseWork: ...
    def undecoded(self) -> tuple[np.ndarray, int]: ...
    def stall_limit(self, step_expected: float) -> float: ...


OVER = (PhaseState.SKIPPED, PhaseState.COMPLETED, PhaseState.FAILED)
PAUSED_MESSAGE = "Paused by `imgtrain queue pause`; `imgtrain queue resume` continues"


@dataclass
class Outlook:
    """What is left, in seconds, as the estimator sees it at one moment."""

    others: Others
    left: dict[str, float] = field(default_factory=dict)  # current batch, per phase
    phase_eta: dict[str, float | None] = field(default_factory=dict)
    overhead: float = 0.0  # the current batch's time outside its phases, still to come
    waiting: float = 0.0  # the run's other batches
    eta: float = 0.0
    spent: float = 0.0  # the run's work seconds so far
    credit: float = 0.0  # in-flight seconds counted as done
    step_expected: float | None = None  # seconds the step in flight should take
    step_n: int = 0  # steps in it
    since: float = 0.0  # seconds since the last step, phase start or resume
    file: str | None = None  # the next file of the phase in flight


def outlook(pr: Progress, now: float) -> Outlook:
    """What is left of the run, in seconds, at `now`."""
    out = Outlook(others=others(pr.run, pr.batch_id))
    if pr.batch_clock is not None:
        _current(pr, out, now, pr.batch_clock)
    for phase, work in out.others.work.items():
        out.waiting += pr.costs.seconds(phase, work)
    out.waiting += pr.costs.decode_seconds(out.others.decode)
    out.waiting += out.others.batches_left * pr.costs.overhead
    out.eta = sum(out.left.values()) + out.overhead + out.waiting
    out.spent += out.others.spent
    return out


def _current(pr: Progress, out: Outlook, now: float, began: float) -> None:
    t = pr.timing
    paused_now = now - t.paused_since if t.paused_since is not None else 0.0
    since = max(now - t.last_event - paused_now, 0.0)
    for phase in PHASES:
        c = pr.counts[phase]
        left = c.total - c.step
        if c.status in OVER or left <= 0:
            continue
        out.left[phase] = pr.costs.seconds(phase, pr.work_of(phase, left))
    # Decoding is a stream of its own, ahead of the models: what is left of it is the
    # photos not decoded yet, and it is over before the first image phase is.
    undecoded, undecoded_n = pr.undecoded()
    decoding = pr.costs.decode_seconds(undecoded) if undecoded_n else 0.0
    first = next((q for q in IMAGE_PHASES if q in out.left), None)
    if first is not None:
        out.left[first] += decoding
    cur = pr.phase
    if cur is not None and cur in out.left:
        c = pr.counts[cur]
        n = min(t.last_n.get(cur, 1 if is_batch_phase(cur) else pr.chunk), c.total - c.step)
        out.step_expected = pr.costs.seconds(cur, pr.work_of(cur, n))
        if cur == first and undecoded_n:
            out.step_expected += decoding * min(1.0, n / undecoded_n)
        # In-flight time counts as done only up to what the step should take.
        out.credit = min(since, out.step_expected)
        out.left[cur] = max(out.left[cur] - out.credit, 0.0)
        out.since, out.step_n = since, n
        out.file = pr.work.name(cur, t.consumed.get(cur, 0))
    active = t.last_event - began - t.paused_total
    out.overhead = max(pr.costs.overhead - (active - t.attributed), 0.0)
    out.spent = active + out.credit
    out.phase_eta = _phase_etas(pr, out)


def _phase_etas(pr: Progress, out: Outlook) -> dict[str, float | None]:
    """Seconds until each phase is done: image phases go chunk by chunk together, so a
    phase is done when the phases after it still have their last chunk to do."""
    etas: dict[str, float | None] = {}
    image_left = sum(out.left.get(q, 0.0) for q in IMAGE_PHASES)
    for i, phase in enumerate(PHASES):
        c = pr.counts[phase]
        if c.status in (PhaseState.SKIPPED, PhaseState.FAILED):
            etas[phase] = None
        elif c.status == PhaseState.COMPLETED or phase not in out.left:
            etas[phase] = 0.0
        elif is_batch_phase(phase):
            # Batch phases run one after another, once the image phases are done.
            etas[phase] = image_left + sum(
                out.left.get(q, 0.0) for q in PHASES[: i + 1] if is_batch_phase(q)
            )
        else:
            later = 0.0
            for q in IMAGE_PHASES[IMAGE_PHASES.index(phase) + 1 :]:
                cq = pr.counts[q]
                left_q = max(cq.total - cq.step, 1)
                later += out.left.get(q, 0.0) * min(1.0, pr.chunk / left_q)
            etas[phase] = max(image_left - later, 0.0)
    return etas


def build_status(
    p: Progress,
    out: Outlook,
    *,
    current_step: int,
    total_steps: int,
    overall: OverallProgress,
    queued: bool,
    paused: bool,
    upcoming: tuple[int, str, dict[str, PhaseCount]] | None,
) -> Status:
    status, message = p.status, p.message
    batch_id, name, counts, phase = p.batch_id, p.batch_name, p.counts, p.phase
    etas: dict[str, float | None] = out.phase_eta
    begun = batch_id is not None
    if not begun and queued and status in (DaemonStatus.IDLE, DaemonStatus.TRAINING):
        if paused:
            status, message = DaemonStatus.PAUSED, PAUSED_MESSAGE
        elif upcoming is not None:
            batch_id, name, counts = upcoming
            status, message = DaemonStatus.TRAINING, f"Starting '{name}'"
            phase = next(
                (
                    q
                    for q in PHASES
                    if counts[q].status not in (PhaseState.SKIPPED, PhaseState.COMPLETED)
                ),
                None,
            )
            etas = {}
    elif not begun and not queued and status == DaemonStatus.TRAINING:
        status, message = DaemonStatus.IDLE, p.idle_message
    elif begun and status == DaemonStatus.IDLE:
        status = DaemonStatus.TRAINING  # a batch is being worked on, whatever came before
    shown = batch_id is not None
    if status == DaemonStatus.IDLE:
        # Nothing queued: no run, whatever the ledger's last run was.
        current_step = total_steps = 0
        overall = OverallProgress()
    elif status in (DaemonStatus.ERROR, DaemonStatus.PAUSED):
        # Nothing moves until the error is mended or the queue resumed, which no estimate
        # can foresee: the work left stays shown, a time for it would be made up.
        overall = overall.model_copy(update={"eta_seconds": None, "eta_at": None})
        etas = {q: eta for q, eta in etas.items() if eta == 0}  # the phases already done
    stall = _stall(p, out) if begun and status == DaemonStatus.TRAINING else None
    number = size = None
    if p.run.batch_ids:
        size = len(p.run.batch_ids)
        if shown and batch_id in p.run.batch_ids:
            number = p.run.batch_ids.index(batch_id) + 1
    return Status(
        status=status,
        message=message,
        updated_at=utcnow(),
        daemon=DaemonInfo(
            pid=os.getpid(),
            version=__version__,
            started_at=p.started_at,
            hostname=socket.gethostname(),
        ),
        error=p.error,
        current_file=name if shown else None,
        batch_id=batch_id,
        batch_number=number,
        batch_queue_size=size,
        batch_step=sum(counts[q].step for q in PHASES) if shown else None,
        batch_total_steps=sum(counts[q].total for q in PHASES) if shown else None,
        phase=phase if shown else None,
        phases=Phases(**{q: counts[q].view(etas.get(q)) for q in PHASES}) if shown else None,
        current_step=current_step if total_steps else None,
        total_steps=total_steps if total_steps else None,
        overall_progress=overall,
        throughput=None if p.throughput is None else round(p.throughput, 3),
        run=_run(p, out, counts if begun else {}) if status != DaemonStatus.IDLE else None,
        stalled=stall is not None,
        stalled_since=None if stall is None else utcnow() - timedelta(seconds=out.since),
        stall_reason=stall,
        queue=p.queue,
        last_batch=p.last_batch,
        errors=list(p.errors),
        totals=p.totals,
        system=_system(p),
    )


def _run(p: Progress, out: Outlook, counts: dict[str, PhaseCount]) -> RunInfo | None:
    if p.run.started_at is None:
        return None
    done, total = out.others.images
    images = [counts[q] for q in IMAGE_PHASES if q in counts]
    active = [c for c in images if c.status != PhaseState.SKIPPED and c.total > 0]
    if active:
        done += min(c.step for c in active)
        total += max(c.total for c in active)
    return RunInfo(
        started_at=p.run.started_at,
        batches_done=out.others.batches_done,
        batches_total=len(p.run.batch_ids),
        images_done=done,
        images_total=total,
    )


def _stall(p: Progress, out: Outlook) -> str | None:
    if out.step_expected is None:
        return None
    if out.since <= p.stall_limit(out.step_expected):
        return None
    where = f"batch {p.batch_id} '{p.batch_name}', phase {p.phase}"
    if out.file is not None:
        where += f", file {out.file}"
        if out.step_n > 1:
            where += f" (and {out.step_n - 1} more in its chunk)"
    elif p.phase is not None and is_batch_phase(p.phase):
        where += f" ({p.message})"
    return (
        f"no step finished for {humanize.duration(out.since)} (one was expected within"
        f" {humanize.duration(out.step_expected)}): {where}"
    )


def _system(p: Any) -> SystemInfo:
    import psutil

    try:
        disk = psutil.disk_usage(p._data_dir).free
    except OSError:
        disk = None
    with p._proc.oneshot():
        return SystemInfo(
            rss_bytes=p._proc.memory_info().rss,
            cpu_percent=p._proc.cpu_percent(interval=None),
            disk_free_bytes=disk,
            device=p._device,
            onnx_providers=p._onnx_providers,
        )
