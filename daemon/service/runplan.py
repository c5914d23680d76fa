"""The run's other batches, as the progress channel counts them.

A run starts when work arrives while the daemon is idle and ends when the
queue empties. The overall percentage covers every batch of the run: the
finished ones with what they did, the waiting ones with all they will do, and
the current one (counted live by the pipeline, so left out here).
"""

from __future__ import annotations

from daemon.ledger.ledger import Ledger
from daemon.status.progress import RunPlan
from daemon.vocab import PHASES, BatchState, is_batch_phase

NOT_STARTED = (BatchState.WAITING, BatchState.RUNNING)
GIVEN_UP = (BatchState.FAILED, BatchState.CANCELLED)


def plan_run(ledger: Ledger, current: int | None, batch_phase_steps: dict[str, int]) -> RunPlan:
    run_id = ledger.current_run()
    if run_id is None:
        return RunPlan()
    batches = ledger.run_batches(run_id)
    counts = ledger.step_counts([b.batch_id for b in batches])
    others = {p: [0, 0] for p in PHASES}
    for b in batches:
        if b.batch_id == current:
            continue
        for p in PHASES:
            done, total = counts[b.batch_id][p]
            if is_batch_phase(p) and b.state in NOT_STARTED:
                # A batch phase restarts whole, with the sub-steps it declares.
                done, total = 0, batch_phase_steps.get(p, 0)
            if b.state in GIVEN_UP:
                total = done  # work that will not happen is not in the run
            others[p][0] += done
            others[p][1] += total
    return RunPlan([b.batch_id for b in batches], others)
