"""The run's batches, as the progress channel counts them.

A run starts when work arrives while the daemon is idle and ends when the
queue empties. The overall percentage and the ETA cover every batch of the
run: the finished ones with what they did and the seconds they took, the
waiting ones with all they will do and what their photos are made of (sizes
read from their headers: `daemon.phases.workload`). The progress channel
counts the batch it is working on live and leaves it out of these sums.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from daemon.ledger import workload as work_rows
from daemon.ledger.ledger import Ledger
from daemon.phases.workload import Workload
from daemon.status.estimate import PhaseWork
from daemon.status.plan import BatchPlan, PhaseCount, RunPlan
from daemon.vocab import PHASES, Batch, BatchState, PhaseName, PhaseState, is_batch_phase

NOT_STARTED = (BatchState.WAITING, BatchState.RUNNING)
GIVEN_UP = (BatchState.FAILED, BatchState.CANCELLED)
FINISHED = (BatchState.COMPLETED, *GIVEN_UP)
DONE_STATES = (PhaseState.SKIPPED, PhaseState.COMPLETED)


def plan_run(ledger: Ledger, workload: Workload, batch_phase_steps: dict[str, int]) -> RunPlan:
    run_id = ledger.current_run()
    if run_id is None:
        return RunPlan()
    batches = ledger.run_batches(run_id)
    ids = [b.batch_id for b in batches]
    counts = ledger.step_counts(ids)
    open_ids = [b.batch_id for b in batches if b.state in NOT_STARTED]
    pending = work_rows.pending_files(ledger, open_ids)
    images = work_rows.image_counts(ledger, ids)
    plans = []
    for b in batches:
        steps: dict[str, list[int]] = {}
        for p in PHASES:
            done, total = counts[b.batch_id][p]
            if is_batch_phase(p) and b.state in NOT_STARTED:
                # A batch phase restarts whole, with the sub-steps it declares.
                done, total = 0, batch_phase_steps.get(p, 0)
            if b.state in GIVEN_UP:
                total = done  # work that will not happen is not in the run
            steps[p] = [done, total]
        plan = BatchPlan(
            b.batch_id,
            steps,
            finished=b.state in FINISHED,
            seconds=b.seconds,
            images=images.get(b.batch_id, (0, 0)),
        )
        if b.state in NOT_STARTED:
            plan.work, plan.decode = _batch_work(b, steps, pending.get(b.batch_id, []), workload)
        plans.append(plan)
    started = work_rows.run_started_at(ledger, run_id)
    return RunPlan(
        batch_ids=ids,
        batches=plans,
        started_at=None if started is None else datetime.fromtimestamp(started, UTC),
    )


def _batch_work(
    batch: Batch, steps: dict[str, list[int]], pending: list, workload: Workload
) -> tuple[dict[str, PhaseWork], np.ndarray]:
    work, decode = workload.phase_work(Path(batch.path or ""), pending)
    face_images = work[PhaseName.FACES].steps if PhaseName.FACES in work else 0.0
    for p in PHASES:
        done, total = steps[p]
        if is_batch_phase(p) and total > done:
            # Clustering's cost follows the faces it will group: expected from the images.
            work[p] = PhaseWork(float(total - done), None, images=face_images)
    return work, decode


def upcoming_counts(
    ledger: Ledger, batch: Batch, batch_phase_steps: dict[str, int]
) -> dict[str, PhaseCount]:
    """The phases of a batch not begun yet, counted as the pipeline will count them."""
    steps = ledger.step_counts([batch.batch_id])[batch.batch_id]
    states = ledger.batch_phases(batch.batch_id)
    counts = {}
    for name in PHASES:
        done, total = steps[name]
        state = PhaseState(states[name]["state"]) if name in states else PhaseState.SKIPPED
        if is_batch_phase(name) and state not in DONE_STATES:
            done, total = 0, batch_phase_steps.get(name, 0)
        counts[name] = PhaseCount(status=state, step=done, total=total)
    return counts
