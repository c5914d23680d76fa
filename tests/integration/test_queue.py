"""The SQLite ledger: claims, duplicates, ordering, resume counts, control flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import InvalidState
from daemon.ledger.ledger import Ledger
from daemon.vocab import BatchState, FileEntry, ImageOutcome, ImageState, SkippedFile

PHASES = ["embedding", "faces", "clustering"]


def _batch(ledger: Ledger, name: str, shas: list[str]) -> int:
    bid = ledger.claims.reserve_batch(name, "folder", [f"/inbox/{name}"])
    ledger.claims.set_batch_path(bid, f"/data/batches/{bid:06d}-{name}")
    files = [FileEntry(f"{i}.jpg", sha, 10, "jpeg") for i, sha in enumerate(shas)]
    ledger.claims.finish_claim(bid, files, [SkippedFile("notes.txt", "NO_IMAGES", "x")], PHASES)
    return bid


def test_batches_run_in_arrival_order_and_an_interrupted_one_first(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["1"])
    b = _batch(ledger, "b", ["2"])
    assert ledger.next_batch().batch_id == a
    ledger.start_batch(b)  # b was running when the daemon died
    assert ledger.next_batch().batch_id == b


def test_same_photo_again_is_a_duplicate_with_no_steps(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["s1", "s2"])
    b = _batch(ledger, "b", ["s2", "s3", "s3"])
    counts = ledger.step_counts([a, b])
    assert counts[a]["embedding"] == [0, 2]
    assert counts[b]["embedding"] == [0, 1]  # s2 is in a, the second s3 repeats the first
    dup = ledger.query(
        "SELECT COUNT(*) n FROM images WHERE batch_id=? AND duplicate_of IS NOT NULL", (b,)
    )[0]["n"]
    assert dup == 2


def test_resume_counts_come_from_the_ledger(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["1", "2", "3"])
    rows = ledger.pending_images(a)
    ledger.record_outcomes(a, "embedding", [ImageOutcome(rows[0].image_id, ImageState.DONE)])
    ledger.record_outcomes(
        a,
        "embedding",
        [ImageOutcome(rows[1].image_id, ImageState.FAILED, "UNREADABLE_IMAGE", "truncated")],
    )
    again = Ledger(tmp_path / "l.db")  # a new process after a crash
    assert again.step_counts([a])[a]["embedding"] == [2, 3]
    pending = {r.image_id: r.phases for r in again.pending_images(a)}
    assert set(pending[rows[0].image_id]) == {"faces"}
    errors = again.query("SELECT code, file FROM errors WHERE image_id IS NOT NULL")
    assert [(e["code"], e["file"]) for e in errors] == [("UNREADABLE_IMAGE", "1.jpg")]


def test_batch_ids_are_never_reused(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["1"])
    with ledger.transaction() as conn:
        conn.execute("DELETE FROM image_phases")
        conn.execute("DELETE FROM images")
        conn.execute("DELETE FROM batch_phases")
        conn.execute("DELETE FROM errors")
        conn.execute("DELETE FROM batches")
    assert _batch(ledger, "b", ["2"]) > a


def test_cancel_waiting_is_immediate_running_is_requested(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["1"])
    b = _batch(ledger, "b", ["2"])
    assert ledger.request_cancel(b) == BatchState.CANCELLED
    ledger.start_batch(a)
    assert ledger.request_cancel(a) == BatchState.RUNNING
    assert ledger.cancel_requested(a)
    ledger.finish_batch(a, BatchState.COMPLETED)
    with pytest.raises(InvalidState):
        ledger.request_cancel(a)


def test_pause_flag_is_shared_between_processes(tmp_path: Path) -> None:
    Ledger(tmp_path / "l.db").set_paused(True)
    assert Ledger(tmp_path / "l.db").is_paused()


def test_runs_gather_queued_batches(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.db")
    a = _batch(ledger, "a", ["1"])
    run = ledger.open_run()
    b = _batch(ledger, "b", ["2"])
    assert ledger.open_run() == run
    assert [x.batch_id for x in ledger.run_batches(run)] == [a, b]
    ledger.end_run(run)
    assert ledger.current_run() is None
    assert ledger.open_run() != run
