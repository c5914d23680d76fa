"""The pure stability tracker, driven with synthetic times (no clock, no disk)."""

from __future__ import annotations

from daemon.ingest.settle import StabilityTracker

A = {"a.jpg": (100, 1)}
AB = {"a.jpg": (100, 1), "b.jpg": (50, 2)}


def test_not_settled_before_settle_seconds() -> None:
    t = StabilityTracker(5.0)
    t.touch("trip", 0.0)
    assert not t.observe("trip", A, 1.0)
    assert not t.observe("trip", A, 4.9)
    assert t.observe("trip", A, 5.0)


def test_first_scan_is_only_a_baseline() -> None:
    t = StabilityTracker(5.0)
    t.touch("trip", 0.0)
    # Long quiet, but one scan cannot agree with anything.
    assert not t.observe("trip", A, 60.0)
    assert t.observe("trip", A, 61.0)


def test_changing_snapshot_restarts_the_wait() -> None:
    t = StabilityTracker(5.0)
    t.touch("trip", 0.0)
    assert not t.observe("trip", A, 4.0)
    assert not t.observe("trip", AB, 6.0)  # a file arrived without an event
    assert not t.observe("trip", AB, 10.9)
    assert t.observe("trip", AB, 11.0)


def test_growing_file_is_a_change() -> None:
    t = StabilityTracker(1.0)
    t.observe("trip", {"a.jpg": (10, 1)}, 0.0)
    assert not t.observe("trip", {"a.jpg": (20, 2)}, 2.0)
    assert not t.observe("trip", {"a.jpg": (20, 2)}, 2.5)
    assert t.observe("trip", {"a.jpg": (20, 2)}, 3.0)


def test_touch_restarts_the_wait() -> None:
    t = StabilityTracker(5.0)
    t.touch("trip", 0.0)
    t.observe("trip", A, 4.0)
    t.touch("trip", 4.5)
    assert not t.observe("trip", A, 6.0)
    assert not t.observe("trip", A, 9.4)
    assert t.observe("trip", A, 9.5)


def test_empty_snapshot_never_settles_but_goes_quiet() -> None:
    t = StabilityTracker(1.0)
    t.touch("empty", 0.0)
    for now in (2.0, 3.0, 100.0):
        assert not t.observe("empty", {}, now)
    assert t.quiet("empty", 100.0)  # the inbox reports it instead of claiming it


def test_due_only_after_a_quiet_period() -> None:
    t = StabilityTracker(5.0)
    assert not t.due("trip", 100.0)  # unknown key
    t.touch("trip", 10.0)
    assert not t.due("trip", 14.0)
    assert t.due("trip", 15.0)


def test_keys_are_independent_and_forgettable() -> None:
    t = StabilityTracker(1.0)
    t.touch("a", 0.0)
    t.touch("b", 0.0)
    t.observe("a", A, 1.0)
    t.observe("b", A, 1.0)
    t.touch("b", 1.5)
    assert t.observe("a", A, 2.0)
    assert not t.observe("b", A, 2.0)
    assert t.pending() == ["a", "b"]
    t.forget("a")
    assert t.pending() == ["b"]
    assert "a" not in t
    assert not t.quiet("a", 10.0)


def test_a_late_report_of_an_older_event_does_not_shorten_the_wait() -> None:
    t = StabilityTracker(5.0)
    t.touch("trip", 10.0)
    t.touch("trip", 8.0)
    t.observe("trip", A, 14.0)
    assert not t.observe("trip", A, 14.5)
    assert t.observe("trip", A, 15.0)


def test_next_due_is_the_earliest_end_of_a_quiet_period() -> None:
    t = StabilityTracker(settle_seconds=5.0)
    assert t.next_due() is None  # nothing tracked: the scanner just ticks
    t.touch("a/", 10.0)
    t.touch("b/", 12.0)
    assert t.next_due() == 15.0
    t.touch("a/", 14.0)  # a new event restarts a's quiet period
    assert t.next_due() == 17.0
    t.forget("b/")
    assert t.next_due() == 19.0
