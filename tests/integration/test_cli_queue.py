"""`imgtrain queue` against a real ledger: listing, cancel, retry, pause, stats, cleanup.

The ledger is built through the same Ledger calls the daemon makes (claim,
start, record outcomes, finish); the running daemon's side of these controls
is in tests/e2e/test_cli_daemon.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from daemon.cli import main
from daemon.errors import InvalidState
from daemon.ledger import admin as queue_admin
from daemon.ledger.ledger import Ledger
from daemon.vocab import BatchState, FileEntry, ImageOutcome, ImageState, SkippedFile
from tests.commands import cli
from tests.conftest import write_config

PHASES = ["embedding", "faces", "clustering"]


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Ledger]:
    cfg = write_config(
        tmp_path / "config.yaml",
        {
            "inbox_dir": "inbox",
            "data_dir": "data",
            "status_dir": "status",
            "queue": {"max_retries": 3},
        },
    )
    return cfg, Ledger(tmp_path / "data" / "ledger.sqlite3")


def claim(ledger: Ledger, name: str, n: int, *, prefix: str | None = None) -> int:
    bid = ledger.claims.reserve_batch(name, "folder", [f"/inbox/{name}"])
    ledger.claims.set_batch_path(bid, f"/data/batches/{bid:06d}-{name}")
    files = [FileEntry(f"{i}.jpg", f"{prefix or name}-{i}", 100, "jpeg") for i in range(n)]
    ledger.claims.finish_claim(
        bid, files, [SkippedFile("notes.txt", "UNSUPPORTED_FORMAT", "x")], PHASES
    )
    return bid


def process(ledger: Ledger, bid: int, *, fail: int = 0, faces: int = 0) -> None:
    """Run a batch as the daemon records it: `fail` images fail, `faces` get a face each."""
    ledger.start_batch(bid)
    rows = ledger.pending_images(bid)
    ledger.record_outcomes(
        bid, "embedding", [ImageOutcome(r.image_id, ImageState.DONE) for r in rows]
    )
    outcomes = []
    for i, r in enumerate(rows):
        if i < fail:
            outcomes.append(
                ImageOutcome(r.image_id, ImageState.FAILED, "UNREADABLE_IMAGE", "truncated")
            )
        else:
            outcomes.append(ImageOutcome(r.image_id, ImageState.DONE))
    ledger.record_outcomes(bid, "faces", outcomes)
    with ledger.transaction() as conn:
        for r in rows[fail : fail + faces]:
            conn.execute(
                "INSERT INTO faces(face_id, sha256, image_id, batch_id, det_score, area,"
                " created_at) VALUES (?,?,?,?,?,?,?)",
                (f"{r.sha256}:0", r.sha256, r.image_id, bid, 0.9, 900.0, time.time()),
            )


def test_the_list_shows_every_batch_with_its_numbers(setup, capsys) -> None:
    cfg, ledger = setup
    done = claim(ledger, "holiday", 4)
    process(ledger, done, faces=2)
    ledger.finish_batch(done, BatchState.COMPLETED, seconds=12.5)
    failed = claim(ledger, "party", 3)
    process(ledger, failed, fail=1)
    ledger.finish_batch(
        failed,
        BatchState.FAILED,
        seconds=2,
        error_code="BATCH_FAILED",
        error_message="RuntimeError: boom",
    )
    waiting = claim(ledger, "garden", 2)

    code, out, _ = cli(capsys, cfg, "queue")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "STATE",
        "FOLDER",
        "IMAGES",
        "FACES",
        "ERRORS",
        "TRIES",
        "DURATION",
        "FINISHED",
    ]
    assert lines[1].split()[:7] == [str(done), "completed", "holiday", "4", "2", "1", "1"]
    assert "12.5 s" in lines[1]
    assert lines[2].split()[:9] == [
        str(failed),
        "failed",
        "party",
        "3",
        "(1",
        "failed)",
        "0",
        "3",
        "1",
    ]
    assert lines[3].split()[:3] == [str(waiting), "waiting", "garden"]
    assert f"batch {failed} failed: BATCH_FAILED: RuntimeError: boom" in out

    code, out, _ = cli(capsys, cfg, "queue", "--json")
    data = json.loads(out)
    assert data["paused"] is False
    assert [b["batch_id"] for b in data["batches"]] == [done, failed, waiting]
    first = data["batches"][0]
    assert set(first) == {
        "batch_id",
        "name",
        "state",
        "path",
        "images",
        "processed",
        "duplicates",
        "failed_images",
        "faces",
        "errors",
        "attempts",
        "seconds",
        "steps_done",
        "steps_total",
        "created_at",
        "started_at",
        "finished_at",
        "error",
        "removed",
    }
    assert first["removed"] is None
    assert (first["images"], first["processed"], first["faces"], first["seconds"]) == (
        4,
        4,
        2,
        12.5,
    )
    assert data["batches"][1]["failed_images"] == 1
    assert data["batches"][1]["error"] == "BATCH_FAILED: RuntimeError: boom"
    assert data["batches"][2]["steps_done"] == 0 and data["batches"][2]["steps_total"] == 4

    code, out, _ = cli(capsys, cfg, "queue", "list", "--state", "waiting", "--json")
    assert [b["name"] for b in json.loads(out)["batches"]] == ["garden"]
    code, out, _ = cli(capsys, cfg, "queue", "-n", "1")
    assert "garden" in out and "holiday" not in out


def test_cancel_pause_and_resume_are_recorded_for_the_daemon(setup, capsys) -> None:
    cfg, ledger = setup
    waiting = claim(ledger, "a", 2)
    running = claim(ledger, "b", 2)
    ledger.start_batch(running)

    code, out, _ = cli(capsys, cfg, "queue", "cancel", str(waiting))
    assert code == 0 and "cancelled (it had not started)" in out
    assert ledger.batch(waiting).state == BatchState.CANCELLED

    code, out, _ = cli(capsys, cfg, "queue", "cancel", str(running), "--json")
    assert json.loads(out)["state"] == "cancel_requested"
    assert ledger.cancel_requested(running) and ledger.batch(running).state == "running"

    code, out, err = cli(capsys, cfg, "queue", "cancel", str(waiting))
    assert code == 1 and out == ""
    assert err.startswith(f"imgtrain: INVALID_STATE: batch {waiting} is cancelled")
    code, _, err = cli(capsys, cfg, "queue", "cancel", "999")
    assert code == 1 and "NOT_FOUND: there is no batch 999" in err

    code, out, _ = cli(capsys, cfg, "queue", "pause")
    assert code == 0 and out.startswith("paused") and ledger.is_paused()
    code, out, _ = cli(capsys, cfg, "queue", "--json")
    assert json.loads(out)["paused"] is True
    code, out, _ = cli(capsys, cfg, "queue")
    assert "The queue is PAUSED" in out
    code, out, _ = cli(capsys, cfg, "queue", "resume", "--json")
    assert json.loads(out) == {
        "paused": False,
        "changed": True,
        "daemon_running": False,
        "message": "resumed; the daemon is not running: it acts on this when it starts",
    }
    assert not ledger.is_paused()


def test_retry_redoes_only_unfinished_images_within_the_limit(setup, capsys) -> None:
    cfg, ledger = setup
    bid = claim(ledger, "party", 5)
    process(ledger, bid, fail=2)
    ledger.finish_batch(bid, BatchState.FAILED, error_code="BATCH_FAILED", error_message="x")

    code, out, _ = cli(capsys, cfg, "queue", "retry", str(bid), "--json")
    assert code == 0
    assert json.loads(out) == {
        "batch_id": bid,
        "name": "party",
        "previous_state": "failed",
        "attempts": 1,
        "max_retries": 3,
        "images_reset": 2,
        "images_pending": 2,
        "state": "waiting",
        "daemon_running": False,
    }
    batch = ledger.batch(bid)
    assert (batch.state, batch.error_code, batch.cancel_requested) == ("waiting", None, False)
    # The images done stay done; only the two failures are pending again, for faces only.
    pending = ledger.pending_images(bid)
    assert [set(r.phases) for r in pending] == [{"faces"}, {"faces"}]
    assert ledger.next_batch().batch_id == bid
    phases = ledger.batch_phases(bid)
    assert {p: phases[p]["state"] for p in PHASES} == dict.fromkeys(PHASES, "pending")

    # max_retries: 3 allows three retries after the first run, then refuses.
    for _ in range(3):
        process(ledger, bid, fail=2)
        ledger.finish_batch(bid, BatchState.FAILED, error_code="BATCH_FAILED", error_message="x")
        if ledger.batch(bid).attempts <= 3:
            assert cli(capsys, cfg, "queue", "retry", str(bid))[0] == 0
    code, _, err = cli(capsys, cfg, "queue", "retry", str(bid))
    assert code == 1
    assert f"INVALID_STATE: batch {bid} was tried 4 times (queue.max_retries is 3)" in err
    assert "->" in err


def test_retry_refuses_batches_that_are_not_failed_or_hold_nothing(setup, capsys) -> None:
    cfg, ledger = setup
    done = claim(ledger, "done", 1)
    process(ledger, done)
    ledger.finish_batch(done, BatchState.COMPLETED)
    with pytest.raises(InvalidState, match="only failed or cancelled"):
        queue_admin.retry_batch(ledger, done, 3)
    empty = ledger.claims.reserve_batch("empty", "folder", ["/inbox/empty"])
    ledger.claims.fail_claim(empty, "NO_IMAGES", "no photos in the folder")
    code, _, err = cli(capsys, cfg, "queue", "retry", str(empty))
    assert code == 1 and "NO_IMAGES: no photos in the folder" in err
    assert "nothing to re-run" in err


def test_a_cancelled_batch_is_retried_from_where_it_stopped(setup) -> None:
    _, ledger = setup
    bid = claim(ledger, "big", 6)
    ledger.start_batch(bid)
    rows = ledger.pending_images(bid)
    for phase in ("embedding", "faces"):
        ledger.record_outcomes(
            bid, phase, [ImageOutcome(r.image_id, ImageState.DONE) for r in rows[:2]]
        )
    ledger.finish_batch(bid, BatchState.CANCELLED, error_code="CANCELLED", error_message="x")
    res = queue_admin.retry_batch(ledger, bid, 3)
    assert (res.images_reset, res.images_pending) == (0, 4)
    assert ledger.step_counts([bid])[bid]["embedding"] == [2, 6]


def test_stats_count_outcomes_and_time(setup, capsys) -> None:
    cfg, ledger = setup
    for name, n, seconds in (("a", 4, 8.0), ("b", 2, 4.0)):
        bid = claim(ledger, name, n)
        process(ledger, bid, faces=1)
        ledger.finish_batch(bid, BatchState.COMPLETED, seconds=seconds)
    bad = claim(ledger, "c", 2)
    process(ledger, bad, fail=1)
    ledger.finish_batch(bad, BatchState.FAILED, seconds=1.0, error_code="X", error_message="y")
    gone = claim(ledger, "d", 1)
    ledger.request_cancel(gone)
    claim(ledger, "e", 1, prefix="a")  # the same photo as a's first: a duplicate

    _, out, _ = cli(capsys, cfg, "queue", "stats", "--json")
    data = json.loads(out)
    assert data["batches"] == {
        "claiming": 0,
        "waiting": 1,
        "running": 0,
        "completed": 2,
        "failed": 1,
        "cancelled": 1,
        "removing": 0,
        "removed": 0,
        "total": 5,
    }
    assert data["finished"] == 4 and data["success_rate"] == 0.5
    assert data["avg_seconds_per_batch"] == 6.0
    assert data["avg_seconds_per_image"] == 2.0  # 12 s over 6 processed images
    assert (data["images"], data["faces"], data["duplicates"], data["failed_images"]) == (
        8,
        2,
        1,
        1,
    )
    _code, out, _ = cli(capsys, cfg, "queue", "stats")
    assert "Success rate: 50.0% of 4 finished batches" in out
    assert "Average time: 6.0 s per batch, 2.0 s per image" in out


def test_cleanup_drops_old_history_but_never_faces_ids_or_files(setup, capsys, tmp_path) -> None:
    cfg, ledger = setup
    photo = tmp_path / "data" / "batches" / "000001-old" / "0.jpg"
    photo.parent.mkdir(parents=True)
    photo.write_bytes(b"not touched")
    old = claim(ledger, "old", 3)
    process(ledger, old)
    ledger.finish_batch(old, BatchState.COMPLETED)
    old_faces = claim(ledger, "old-faces", 2)
    process(ledger, old_faces, fail=1, faces=1)
    ledger.finish_batch(old_faces, BatchState.COMPLETED)
    recent = claim(ledger, "recent", 1)
    process(ledger, recent)
    ledger.finish_batch(recent, BatchState.COMPLETED)
    running = claim(ledger, "running", 1)
    ledger.start_batch(running)
    long_ago = time.time() - 40 * 86400
    with ledger.transaction() as conn:
        conn.execute(
            "UPDATE batches SET finished_at=?, created_at=? WHERE batch_id IN (?,?)",
            (long_ago, long_ago, old, old_faces),
        )
        conn.execute("UPDATE batches SET created_at=? WHERE batch_id=?", (long_ago, running))
        conn.execute("UPDATE errors SET at=?", (long_ago,))

    before = ledger.query("SELECT COUNT(*) n FROM errors")[0]["n"]
    code, out, _ = cli(capsys, cfg, "queue", "cleanup", "--days", "30", "--dry-run")
    assert code == 0 and out.startswith("would remove") and f"1 batches ({old})" in out
    assert ledger.query("SELECT COUNT(*) n FROM errors")[0]["n"] == before

    code, out, _ = cli(capsys, cfg, "queue", "cleanup", "--days", "30", "--json")
    data = json.loads(out)
    assert data["batches"] == [old] and data["kept_for_faces"] == [old_faces]
    assert (data["images"], data["image_phases"], data["batch_phases"]) == (3, 6, 3)
    # Every error older than 30 days goes (here even the recent batch's, whose time was
    # set back), except those of a batch still running.
    assert data["errors"] == 4
    remaining = {r["batch_id"] for r in ledger.query("SELECT batch_id FROM errors")}
    assert remaining == {running}
    assert [b.batch_id for b in ledger.batches()] == [old_faces, recent, running]
    assert ledger.query("SELECT COUNT(*) n FROM faces")[0]["n"] == 1
    assert photo.read_bytes() == b"not touched"
    # Batch ids are never reused.
    assert claim(ledger, "new", 1) == running + 1

    code, out, _ = cli(capsys, cfg, "queue", "cleanup", "--days", "30")
    assert "removed history older than 30 days" in out and "0 batches (none)" in out
    assert f"kept 1 old batches whose faces people and clusters use ({old_faces})" in out
    assert "Photos on disk and vectors in ChromaDB are untouched" in out


def test_usage_errors_exit_2_and_a_missing_ledger_is_explained(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"data_dir": "nowhere"})
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), "queue", "cleanup"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--config", str(cfg), "queue", "cleanup", "--days", "-1"])
    assert exc.value.code == 2
    code, _out, err = cli(capsys, cfg, "queue")
    assert code == 1
    assert f"NOT_FOUND: there is no ledger at {tmp_path / 'nowhere' / 'ledger.sqlite3'}" in err
    assert not (tmp_path / "nowhere").exists()


def test_the_list_names_inbox_entries_refused_and_still_there(setup, capsys) -> None:
    cfg, ledger = setup
    inbox = cfg.parent / "inbox"

    def notice(name: str, code: str, message: str) -> None:  # as the daemon records one
        with ledger.transaction() as conn:
            conn.execute(
                "INSERT INTO errors(at, file, code, message) VALUES (?,?,?,?)",
                (time.time(), str(inbox / name), code, message),
            )

    for name in ("huge", "deep", "was refused"):
        (inbox / name).mkdir(parents=True)
    (inbox / "sneaky").symlink_to("/usr/share")
    notice(
        "huge", "LIMIT_EXCEEDED", "'huge' holds more than 5 files (inbox.max_files_per_batch: 5)"
    )
    notice("sneaky", "LINK_OUTSIDE_ROOTS", "the link 'sneaky' leads to /usr/share, outside")
    notice("gone", "LIMIT_EXCEEDED", "'gone' holds ...")  # claimed since: no longer in the inbox
    notice("was refused", "LIMIT_EXCEEDED", "'was refused' holds ...")
    notice("was refused", "NO_IMAGES", "'was refused' holds no photos (yet)")  # the latest word
    notice("deep", "NO_IMAGES", "'deep' holds no photos (yet)")

    code, out, _ = cli(capsys, cfg, "queue")
    assert code == 0 and "No batches yet" in out
    refused = out[out.index("Refused, left in the inbox (2):") :].splitlines()[1:]
    assert [line.split(":")[0].strip() for line in refused] == [
        "LIMIT_EXCEEDED",
        "LINK_OUTSIDE_ROOTS",
    ]
    assert "(inbox.max_files_per_batch: 5)" in refused[0]

    code, out, _ = cli(capsys, cfg, "queue", "--json")
    data = json.loads(out)
    assert [(r["code"], r["file"]) for r in data["refused"]] == [
        ("LIMIT_EXCEEDED", str(inbox / "huge")),
        ("LINK_OUTSIDE_ROOTS", str(inbox / "sneaky")),
    ]
