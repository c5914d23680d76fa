"""A full disk under the status file or under the ledger.

Each test gives the daemon a small filesystem of its own (a size-limited
tmpfs, mounted by the test; without root the test fails and says so), fills
it with one big file, and frees it again. A full disk is a condition, not a
crash: the previous status file stays intact and valid, the daemon keeps
running and says what is wrong, nothing dropped is lost, and it carries on by
itself once there is room again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import chromadb

from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import StatusReader, wait_for
from tests.reliability.conftest import LedgerProbe, file_states, fill_disk, ready


def _disk_full_reported(s: dict[str, Any]) -> bool:
    error = s.get("error") or {}
    return error.get("code") == "DISK_FULL" or any(e["code"] == "DISK_FULL" for e in s["errors"])


def _stage(folder: Path, count: int, seed: int) -> dict[str, str]:
    for i in range(count):
        make_jpeg(folder / f"p{i:02d}.jpg", size=(320, 240), seed=seed + i)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_status_disk_full_keeps_the_last_good_file_and_recovers(
    tmpfs, make_daemon, tmp_path: Path
) -> None:
    fs = tmpfs("statusfs", "256k")
    d: Daemon = make_daemon(status_dir=str(fs))
    d.start()
    d.wait_status(ready, 90, "the daemon to load its models")
    reader = StatusReader(d.status_path).start()
    try:
        filler = fill_disk(fs)
        wait_for(lambda: "status file not updated: disk full" in d.log(), 30, "the log to say so")
        last_good = d.status_path.read_bytes()
        _stage(tmp_path / "trip", 6, seed=1)
        (tmp_path / "trip").rename(d.inbox / "trip")
        probe = LedgerProbe(d.data / "ledger.sqlite3")
        wait_for(
            lambda: probe.value("SELECT state FROM batches WHERE name='trip'") == "completed",
            90,
            "the batch to complete while the status cannot be written",
        )
        probe.close()
        d.assert_alive()
        assert d.status_path.read_bytes() == last_good, "the previous status file was touched"
        assert json.loads(last_good)["daemon"]["pid"] == d.proc.pid
        assert d.log().count("status file not updated: disk full") == 1, "say it once"

        filler.unlink()
        s = d.wait_status(
            lambda s: (
                s["queue"]["completed"] == 1 and (s["last_batch"] or {}).get("name") == "trip"
            ),
            30,
            "a fresh status once there is room",
        )
        assert s["status"] == "idle"
        assert "status file writable again" in d.log()
        assert sorted(os.listdir(fs)) == [
            "imgtrain.prom",  # the metrics beside the status, written the same way
            "training_status.json",
            "training_status.schema.json",
        ], "a temporary file was left behind"
    finally:
        reader.stop()
    assert reader.errors == [], reader.errors[:5]
    assert d.terminate() == 0
    assert d.status()["status"] == "stopped"


def _ledger_on_small_disk(tmpfs: Any, make_daemon: Any) -> tuple[Daemon, Path]:
    """inbox and data on one small filesystem (claiming is a rename: they must share one)."""
    fs = tmpfs("datafs", "64m")
    d: Daemon = make_daemon(
        inbox_dir=str(fs / "inbox"), data_dir=str(fs / "data"), clip={"batch_size": 2}
    )
    return d, fs


def _check_library(d: Daemon, expected: dict[str, dict[str, str]]) -> None:
    """Every batch completed with every image processed; Chroma holds each photo once."""
    ledger = d.ledger()
    assert ledger.query("PRAGMA integrity_check")[0][0] == "ok"
    all_batches = ledger.batches()
    batches = {b.name: b for b in all_batches}
    assert sorted(b.name for b in all_batches) == sorted(expected), "a drop became two batches"
    for name, files in expected.items():
        b = batches[name]
        assert b.state == "completed", (name, b.state, b.error_code, b.error_message)
        rows = ledger.query(
            "SELECT i.rel_path, i.sha256, GROUP_CONCAT(p.state) states FROM images i"
            " JOIN image_phases p USING(image_id) WHERE i.batch_id=? GROUP BY i.image_id",
            (b.batch_id,),
        )
        assert {r["rel_path"]: r["sha256"] for r in rows} == files
        assert all("failed" not in r["states"] for r in rows), [dict(r) for r in rows]
        home = Path(b.path)
        assert {rel: st[1] for rel, st in file_states(home).items()} == files
    client = chromadb.PersistentClient(path=str(d.data / "chroma"))
    ids = client.get_collection("images").get(include=[])["ids"]
    assert sorted(ids) == sorted({sha for f in expected.values() for sha in f.values()})


def test_ledger_disk_full_while_idle_then_the_drop_is_claimed_when_room_returns(
    tmpfs, make_daemon
) -> None:
    d, fs = _ledger_on_small_disk(tmpfs, make_daemon)
    expected = {
        "first": _stage(fs / "stage" / "first", 4, seed=10),
        "second": _stage(fs / "stage" / "second", 4, seed=20),
    }
    d.start()
    d.wait_status(ready, 90, "the daemon to load its models")
    (fs / "stage" / "first").rename(d.inbox / "first")
    d.wait_idle_with(completed=1, timeout=60)

    filler = fill_disk(fs)
    (fs / "stage" / "second").rename(d.inbox / "second")  # a rename needs no free space
    d.wait_status(_disk_full_reported, 30, "DISK_FULL in the status (it is on another disk)")
    left = file_states(d.inbox / "second") if (d.inbox / "second").exists() else None
    assert left is None or {rel: st[1] for rel, st in left.items()} == expected["second"]

    filler.unlink()
    final = d.wait_idle_with(completed=2, timeout=60)  # by itself: no restart, no command
    assert final["error"] is None, final["error"]
    assert d.terminate() == 0
    _check_library(d, expected)


def test_ledger_disk_full_mid_batch_pauses_and_resumes_when_room_returns(
    tmpfs, make_daemon
) -> None:
    d, fs = _ledger_on_small_disk(tmpfs, make_daemon)
    expected = {
        "first": _stage(fs / "stage" / "first", 4, seed=10),
        "second": _stage(fs / "stage" / "second", 40, seed=100),
    }
    d.start()
    d.wait_status(ready, 90, "the daemon to load its models")
    (fs / "stage" / "first").rename(d.inbox / "first")
    d.wait_idle_with(completed=1, timeout=60)
    (fs / "stage" / "second").rename(d.inbox / "second")
    probe = LedgerProbe(d.data / "ledger.sqlite3")
    wait_for(
        lambda: (
            probe.value(
                "SELECT COUNT(*) FROM image_phases p JOIN images i USING(image_id)"
                " JOIN batches b USING(batch_id) WHERE b.name='second' AND p.state='done'"
            )
            >= 4
        ),
        60,
        "the second batch to be under way",
        interval=0.01,
    )
    probe.close()

    filler = fill_disk(fs)
    d.wait_status(_disk_full_reported, 30, "DISK_FULL in the status (it is on another disk)")
    d.assert_alive()

    filler.unlink()
    final = d.wait_idle_with(completed=2, timeout=90)  # by itself: no restart, no command
    assert final["queue"]["failed"] == 0
    assert d.terminate() == 0
    _check_library(d, expected)
