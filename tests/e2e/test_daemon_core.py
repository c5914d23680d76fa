"""The daemon core end to end: pickup, queue, phases, and a status file that never lies."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

import jq

from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import StatusReader, wait_for

USER_QUERY = (
    "{current_file, batch_step, batch_total_steps, batch_number, batch_queue_size, "
    "file_pct: ((.batch_step / .batch_total_steps * 100) | floor), "
    "queue_pct: ((.batch_number / .batch_queue_size * 100) | floor)}"
)


def _check_truthful(snapshots: list[dict[str, Any]]) -> None:
    """The truthfulness rules, over every snapshot a reader saw."""
    last_pct: dict[tuple[int, str], float] = {}
    last_overall: dict[tuple[int, int], float] = {}
    for s in snapshots:
        if s["batch_id"] is None:
            continue
        assert 0 <= s["batch_step"] <= s["batch_total_steps"], s
        assert s["current_step"] <= s["total_steps"], s
        assert 1 <= s["batch_number"] <= s["batch_queue_size"], s
        work_left = s["batch_step"] < s["batch_total_steps"]
        for name, ph in s["phases"].items():
            assert ph["step"] <= ph["total_steps"]
            if ph["step"] < ph["total_steps"]:
                assert ph["status"] != "completed", (name, ph)
                assert ph["percentage"] < 100, (name, ph)
            key = (s["batch_id"], name)
            assert ph["percentage"] >= last_pct.get(key, 0), f"{name} went backwards: {s}"
            last_pct[key] = ph["percentage"]
        overall = s["overall_progress"]["percentage"]
        if s["current_step"] < s["total_steps"]:
            assert overall < 100, s
        okey = (s["batch_id"], s["total_steps"])
        assert overall >= last_overall.get(okey, 0), f"overall went backwards: {s}"
        last_overall[okey] = overall
        if work_left:
            assert s["status"] in ("training", "paused"), s
        out = jq.compile(USER_QUERY).input_value(s).first()
        assert out["current_file"] == s["current_file"]
        assert 0 <= out["file_pct"] <= 100 and 0 < out["queue_pct"] <= 100


def _copy_slowly(files: list[Path], dest: Path, gap: float) -> None:
    dest.mkdir(parents=True)
    for f in files:
        shutil.copy(f, dest / f.name)
        time.sleep(gap)  # simulating a slow copy: the gap is the point, not a wait


def test_a_whole_run_of_several_folders(daemon_factory, tmp_path: Path) -> None:
    # settle_seconds 2 against copy gaps of 0.6 s: a margin a busy machine cannot eat.
    d: Daemon = daemon_factory(inbox={"settle_seconds": 2.0})
    src = tmp_path / "src"
    slow = [make_jpeg(src / "slow" / f"s{i}.jpg", seed=100 + i) for i in range(5)]
    nested = tmp_path / "nested"
    for i in range(4):
        make_jpeg(nested / "2024" / f"m{i:02d}" / f"n{i}.jpg", seed=200 + i)
    (nested / ".DS_Store").write_bytes(b"\0junk")
    (nested / "Thumbs.db").write_bytes(b"junk")
    (nested / "2024" / "._n0.jpg").write_bytes(b"appledouble")
    (nested / "@eaDir").mkdir()
    make_jpeg(nested / "@eaDir" / "thumb.jpg", seed=999)
    moved = tmp_path / "moved"
    for i in range(3):
        make_jpeg(moved / f"v{i}.jpg", seed=300 + i)

    d.start()
    reader = StatusReader(d.status_path).start()
    try:
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        os.rename(nested, d.inbox / "nested")
        os.rename(moved, d.inbox / "moved folder")
        for i in range(2):
            make_jpeg(d.inbox / f"loose{i}.jpg", seed=400 + i)
        # Gaps of 0.6 s, shorter than settle_seconds: the folder must not split in two.
        _copy_slowly(slow, d.inbox / "slow", gap=0.6)
        final = d.wait_idle_with(completed=4, timeout=180)
    finally:
        reader.stop()
    assert reader.errors == []
    assert reader.reads > 100

    batches = d.ledger().batches()
    sizes = {
        b.name: d.ledger().query("SELECT COUNT(*) n FROM images WHERE batch_id=?", (b.batch_id,))[
            0
        ]["n"]
        for b in batches
    }
    loose = [n for n in sizes if n.startswith("loose")]
    assert len(loose) == 1, sizes
    assert sizes == {"nested": 4, "moved folder": 3, "slow": 5, loose[0]: 2}
    assert all(b.state == "completed" for b in batches)
    assert not any(d.inbox.iterdir()), "the inbox should be empty after claiming"
    # Originals live on, unmodified, under data/batches/<id>-<name>/.
    claimed = {p.name for p in (d.data / "batches").iterdir()}
    assert any(n.endswith("-slow") for n in claimed)
    assert sorted(p.name for p in next((d.data / "batches").glob("*-slow")).iterdir()) == [
        f.name for f in slow
    ]
    training = [s for s in reader.snapshots if s["status"] == "training" and s["batch_id"]]
    assert training, "the reader never saw the daemon at work"
    _check_truthful(reader.snapshots)
    # Which phases a reader happens to catch depends on timing; that it always names one does not.
    assert all(s["phase"] in ("embedding", "faces", "clustering") for s in training)
    phases = d.ledger().query("SELECT phase, state FROM batch_phases")
    assert {(r["phase"], r["state"]) for r in phases} == {
        ("embedding", "completed"),
        ("faces", "completed"),
        ("clustering", "completed"),
    }
    assert final["last_batch"]["state"] == "completed"
    assert final["totals"]["images"] == 14
    assert final["current_file"] is None and final["phases"] is None
    assert d.terminate() == 0


def test_sigkill_mid_batch_then_restart_processes_every_image_once(daemon_factory, tmp_path):
    d: Daemon = daemon_factory(clip={"batch_size": 2})
    folder = tmp_path / "big"
    for i in range(40):
        make_jpeg(folder / f"p{i:03d}.jpg", size=(640, 480), seed=i)
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    os.rename(folder, d.inbox / "big")
    reader = StatusReader(d.status_path).start()
    try:
        d.wait_status(lambda s: (s["batch_step"] or 0) >= 10, 120, "the batch to be under way")
        d.kill()
        killed_at = d.status()
        assert killed_at is not None and killed_at["status"] == "training"
        d.start()
        # The restarted daemon corrects the dead one's status at once.
        d.wait_status(lambda s: True, 60, "the new daemon's first status")
        final = d.wait_idle_with(completed=1, timeout=180)
    finally:
        reader.stop()
    assert reader.errors == []
    ledger = d.ledger()
    (batch,) = ledger.batches()
    assert batch.state == "completed" and batch.attempts == 2
    left = ledger.query("SELECT COUNT(*) n FROM image_phases WHERE state='pending'")[0]["n"]
    assert left == 0
    import chromadb

    client = chromadb.PersistentClient(path=str(d.data / "chroma"))
    images = client.get_collection("images")
    assert images.count() == 40
    assert final["last_batch"]["processed"] == 40


def test_sigterm_stops_within_seconds_and_says_stopped(daemon_factory, tmp_path: Path) -> None:
    d: Daemon = daemon_factory(clip={"batch_size": 2})
    folder = tmp_path / "f"
    for i in range(30):
        make_jpeg(folder / f"p{i}.jpg", size=(640, 480), seed=i)
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    os.rename(folder, d.inbox / "f")
    d.wait_status(lambda s: (s["batch_step"] or 0) >= 2, 120, "work to start")
    t0 = time.monotonic()
    code = d.terminate(timeout=20)
    took = time.monotonic() - t0
    assert code == 0
    s = d.status()
    assert s["status"] == "stopped"
    assert "resumes on restart" in s["message"]
    assert took < 20


def test_missing_model_is_an_error_state_that_keeps_queuing(daemon_factory, tmp_path, shared):
    empty_pack = tmp_path / "pack"
    empty_pack.mkdir()
    d: Daemon = daemon_factory(faces={"model_dir": str(empty_pack), "download": False})
    folder = tmp_path / "f"
    make_jpeg(folder / "a.jpg", seed=1)
    d.start()
    s = d.wait_status(lambda s: s["status"] == "error", 90, "MODEL_UNAVAILABLE")
    assert s["error"]["code"] == "MODEL_UNAVAILABLE"
    assert str(empty_pack) in s["error"]["message"]
    os.rename(folder, d.inbox / "f")
    d.wait_status(lambda s: s["queue"]["waiting"] == 1, 30, "the folder to be queued anyway")
    assert d.proc.poll() is None, "the daemon must not exit"
    for name in ("det_2.5g.onnx", "mobilefacenet_128.onnx"):
        shutil.copy(shared / "models" / "faces" / name, empty_pack / name)
    d.proc.send_signal(signal.SIGHUP)
    d.wait_idle_with(completed=1, timeout=120)


def test_systemd_notify_protocol(daemon_factory, tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(0.5)
    messages: list[str] = []

    def received(token: str) -> bool:
        try:
            while True:
                messages.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        return any(token in m for m in messages)

    d: Daemon = daemon_factory()
    d.start(env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "2000000"})
    wait_for(lambda: received("READY=1"), 90, "READY=1")
    wait_for(lambda: received("WATCHDOG=1"), 10, "a watchdog ping")
    assert any("STATUS=" in m for m in messages)
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: received("STOPPING=1"), 20, "STOPPING=1")
    assert d.proc.wait(timeout=20) == 0
    sock.close()
