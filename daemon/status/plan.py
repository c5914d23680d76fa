"""The counts the progress channel keeps: one phase of the current batch, and the run.

The run is every batch of it (finished, current, waiting) as the ledger has
them, each with its steps, the work it has left and the seconds it took. The
progress channel counts the batch it is working on live and the rest from
here, so a batch moves from "the run's" to "current" by `begin_batch` alone,
with nothing counted twice or dropped between the two.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from daemon.status.estimate import DECODE_FEATURES, PhaseWork
from daemon.status.model import PhaseProgress, honest_percentage
from daemon.vocab import PHASES, PhaseState


@dataclass
class PhaseCount:
    status: PhaseState = PhaseState.PENDING
    step: int = 0
    total: int = 0

    def view(self, eta: float | None = None) -> PhaseProgress:
        total = self.total
        if self.status == PhaseState.COMPLETED or (
            total == 0 and self.status != PhaseState.PENDING
        ):
            pct = 100.0 if self.status == PhaseState.COMPLETED else 0.0
        else:
            pct = honest_percentage(self.step, total, self.step < total)
        return PhaseProgress(
            status=self.status,
            step=self.step,
            total_steps=total,
            percentage=round(pct, 1),
            eta_seconds=None if eta is None else round(eta, 1),
        )


@dataclass
class BatchPlan:
    """One batch of the run, from the ledger."""

    batch_id: int
    steps: dict[str, list[int]]  # phase -> [done, total]
    work: dict[str, PhaseWork] = field(default_factory=dict)  # phase -> work not done yet
    decode: np.ndarray | None = None  # decode features of its photos not decoded yet
    finished: bool = False  # completed, failed or cancelled
    seconds: float = 0.0  # work seconds spent on it so far (all attempts)
    images: tuple[int, int] = (0, 0)  # images through every image phase, images to process


@dataclass
class RunPlan:
    """The run's batches. `others` and friends carry aggregate counts directly (a plan
    built by hand); `batches` are summed at each snapshot, leaving out the current one."""

    batch_ids: list[int] = field(default_factory=list)
    others: dict[str, list[int]] = field(default_factory=lambda: {p: [0, 0] for p in PHASES})
    batches: list[BatchPlan] = field(default_factory=list)
    started_at: datetime | None = None


@dataclass
class Others:
    """The run without the batch counted live."""

    steps: dict[str, list[int]]
    work: dict[str, PhaseWork]
    decode: np.ndarray = field(default_factory=lambda: np.zeros(len(DECODE_FEATURES)))
    batches_left: int = 0  # not finished: each still costs a batch's overhead
    batches_done: int = 0
    spent: float = 0.0  # work seconds spent, the current batch's earlier attempts included
    images: list[int] = field(default_factory=lambda: [0, 0])


def others(run: RunPlan, current: int | None) -> Others:
    out = Others({p: list(run.others[p]) for p in PHASES}, {})
    for p in PHASES:  # steps counted by hand come without their make-up: plain steps
        done, total = run.others[p]
        if total > done:
            out.work[p] = PhaseWork(float(total - done))
    for b in run.batches:
        out.spent += b.seconds
        if b.batch_id == current:
            continue
        for p in PHASES:
            done, total = b.steps.get(p, (0, 0))
            out.steps[p][0] += done
            out.steps[p][1] += total
        if b.finished:
            out.batches_done += 1
        else:
            out.batches_left += 1
            for p, w in b.work.items():
                out.work[p] = out.work[p] + w if p in out.work else w
            if b.decode is not None:
                out.decode = out.decode + b.decode
        out.images[0] += b.images[0]
        out.images[1] += b.images[1]
    return out


@dataclass
class Counters:
    """Totals since the daemon started, for monitoring (`daemon.status.metrics`)."""

    phase_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    phase_steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    images: int = 0  # through every image phase
    faces: int = 0


@dataclass
class Timing:
    """The current batch's clock readings (the progress channel's clock)."""

    began: float | None = None  # when the batch began
    last_event: float = 0.0  # the last step, phase start or resume
    paused_since: float | None = None
    paused_total: float = 0.0
    attributed: float = 0.0  # seconds of the batch that went into the models
    reports: int = 0
    consumed: dict[str, int] = field(default_factory=dict)  # pending images reported, per phase
    last_n: dict[str, int] = field(default_factory=dict)  # steps in each phase's last report
    decode_cpu: float = 0.0  # CPU seconds the decode workers spent since the last report
    decoded: np.ndarray = field(default_factory=lambda: np.zeros(len(DECODE_FEATURES)))
    decoded_n: int = 0  # photos decoded so far
