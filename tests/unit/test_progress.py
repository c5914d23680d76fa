"""Truthfulness rules of the progress channel, on synthetic step reports."""

from __future__ import annotations

import pytest

from daemon.status.progress import PhaseCount, Progress, RunPlan
from daemon.vocab import PhaseState


class FakeClock:
    """The progress channel's clock, moved by hand: step times are exact, nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def _progress(costs: dict[str, float] | None = None, clock: FakeClock | None = None) -> Progress:
    return Progress(data_dir="/", costs=costs or {}, clock=clock or FakeClock())


def _begin(p: Progress, n_images: int, clustering: int = 5, batch_id: int = 1) -> None:
    p.begin_batch(
        batch_id,
        "holiday",
        {
            "embedding": PhaseCount(total=n_images),
            "faces": PhaseCount(total=n_images),
            "clustering": PhaseCount(total=clustering),
        },
    )


def test_phase_with_work_left_never_shows_100() -> None:
    c = PhaseCount(status=PhaseState.RUNNING, step=9999, total=10000)
    assert c.view().percentage < 100
    c.step = 10000
    assert c.view().percentage == 100.0


def test_completed_with_work_left_is_refused() -> None:
    p = _progress()
    _begin(p, 10)
    p.phase_started("embedding")
    p.advance("embedding", 9)
    with pytest.raises(AssertionError):
        p.phase_finished("embedding", PhaseState.COMPLETED)


def test_overall_is_weighted_by_measured_cost_not_step_count() -> None:
    # The seed failure: 100% shown after the cheap phase while the expensive ones ran.
    p = _progress({"embedding": 0.01, "faces": 1.0, "clustering": 0.1})
    _begin(p, 100)
    p.phase_started("embedding")
    p.advance("embedding", 100)
    p.phase_finished("embedding", PhaseState.COMPLETED)
    s = p.snapshot()
    assert s.phases.embedding.percentage == 100.0
    assert s.phases.faces.percentage == 0.0
    # Half the steps are done, but only ~1% of the work.
    assert s.batch_step == 100 and s.batch_total_steps == 205
    assert s.overall_progress.percentage < 10
    assert s.overall_progress.eta_seconds > 90


def test_costs_are_learned_from_reports() -> None:
    p = _progress({"embedding": 10.0})
    _begin(p, 200)
    p.phase_started("embedding")
    before = p.costs.cost("embedding")
    for _ in range(50):
        p.advance("embedding", 1)  # reported back to back: measured cost ~0
    assert p.costs.cost("embedding") < before / 4


def test_percentage_never_goes_backwards_within_a_batch() -> None:
    clock = FakeClock()
    p = _progress({"embedding": 0.001, "faces": 0.001, "clustering": 0.001}, clock)
    _begin(p, 50)
    p.phase_started("embedding")
    seen = []
    for i in range(50):
        clock.tick(0.05 if i == 25 else 0.001)  # a slow step raises the learned cost
        p.advance("embedding", 1)
        seen.append(p.snapshot().overall_progress.percentage)
    assert seen == sorted(seen)


def test_new_folder_grows_total_and_may_lower_percentage() -> None:
    clock = FakeClock()
    p = _progress({"embedding": 1.0, "faces": 1.0, "clustering": 1.0}, clock)
    _begin(p, 10)
    p.set_run(RunPlan(batch_ids=[1]))
    p.phase_started("embedding")
    clock.tick(10.0)  # the work done is the time it took
    p.advance("embedding", 10)
    before = p.snapshot()
    p.set_run(
        RunPlan(
            batch_ids=[1, 2], others={"embedding": [0, 10], "faces": [0, 10], "clustering": [0, 5]}
        )
    )
    after = p.snapshot()
    assert after.total_steps == before.total_steps + 25
    assert after.batch_queue_size == 2 and after.batch_number == 1
    assert after.overall_progress.percentage < before.overall_progress.percentage


def test_overall_reaches_100_only_when_every_step_is_done() -> None:
    p = _progress()
    _begin(p, 3, clustering=1)
    p.set_run(RunPlan(batch_ids=[1]))
    for phase, n in (("embedding", 3), ("faces", 3), ("clustering", 1)):
        p.phase_started(phase)
        p.advance(phase, n)
        s = p.snapshot()
        if phase != "clustering":
            assert s.overall_progress.percentage < 100
    assert p.snapshot().overall_progress.percentage == 100.0


def test_advance_never_exceeds_total() -> None:
    p = _progress()
    _begin(p, 2)
    p.phase_started("faces")
    p.advance("faces", 5)
    assert p.snapshot().phases.faces.step == 2


def test_idle_snapshot_has_nulls_for_batch_fields() -> None:
    s = _progress().snapshot()
    assert s.current_file is None and s.batch_step is None and s.phases is None
    assert s.status == "idle"


@pytest.mark.parametrize("blocked", ["error", "paused"])
def test_no_eta_while_nothing_can_move(blocked: str) -> None:
    """A missing model or a paused queue holds the work for as long as it lasts: the work
    left stays shown, but no time for it (it used to promise seconds, then sat at them)."""
    from daemon.status.model import ErrorInfo
    from daemon.vocab import DaemonStatus

    clock = FakeClock()
    p = _progress({"embedding": 1.0, "faces": 1.0, "clustering": 1.0}, clock)
    _begin(p, 10)
    p.set_run(RunPlan(batch_ids=[1]))
    p.phase_started("embedding")
    clock.tick(5.0)
    p.advance("embedding", 10)
    p.phase_finished("embedding", PhaseState.COMPLETED)
    p.phase_started("faces")
    clock.tick(2.0)
    p.advance("faces", 3)
    working = p.snapshot()
    assert working.overall_progress.eta_seconds and working.phases.faces.eta_seconds

    if blocked == "error":
        missing = ErrorInfo(code="MODEL_UNAVAILABLE", message="3 models missing", hint="import")
        p.set_state(DaemonStatus.ERROR, "models missing", missing)
    else:
        p.set_state(DaemonStatus.PAUSED, "paused")
    s = p.snapshot()
    assert s.status == blocked
    assert (s.overall_progress.eta_seconds, s.overall_progress.eta_at) == (None, None)
    assert s.overall_progress.percentage == working.overall_progress.percentage
    assert s.phases.faces.eta_seconds is None and s.phases.clustering.eta_seconds is None
    assert s.phases.embedding.eta_seconds == 0  # done is still done
    assert (s.current_step, s.total_steps) == (working.current_step, working.total_steps)

    p.set_state(DaemonStatus.TRAINING, "back")
    assert p.snapshot().overall_progress.eta_seconds is not None
