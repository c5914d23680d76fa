"""The status file: atomic replacement, schema, and a full disk that loses nothing."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from daemon.status.model import DaemonInfo, Status, json_schema, utcnow
from daemon.status.writer import StatusWriter
from daemon.vocab import DaemonStatus

REQUIRED = [
    "status",
    "message",
    "updated_at",
    "daemon",
    "current_file",
    "batch_id",
    "batch_number",
    "batch_queue_size",
    "batch_step",
    "batch_total_steps",
    "phase",
    "phases",
    "current_step",
    "total_steps",
    "overall_progress",
    "throughput",
    "queue",
    "last_batch",
    "errors",
    "totals",
    "system",
    "schema_version",
]


def _status(n: int = 0) -> Status:
    return Status(
        status=DaemonStatus.TRAINING,
        message=f"step {n}" + "x" * 2000,  # big enough that a torn write would show
        updated_at=utcnow(),
        daemon=DaemonInfo(pid=os.getpid(), version="t", started_at=utcnow(), hostname="h"),
        batch_step=n,
    )


def test_every_documented_field_is_present_even_when_null(tmp_path: Path) -> None:
    w = StatusWriter(
        tmp_path / "s.json", _status, busy=lambda: True, schema_path=tmp_path / "x.json"
    )
    w.flush()
    data = json.loads((tmp_path / "s.json").read_text())
    for key in REQUIRED:
        assert key in data, key
    assert data["current_file"] is None
    schema = json.loads((tmp_path / "x.json").read_text())
    assert set(REQUIRED) <= set(schema["properties"])


def test_published_schema_matches_the_model() -> None:
    repo_schema = Path(__file__).resolve().parents[2] / "status" / "training_status.schema.json"
    assert repo_schema.read_text() == json_schema(), (
        "status/training_status.schema.json is out of date: run "
        "`python -c 'from daemon.status.model import json_schema; print(json_schema(), end=\"\")'"
        " > status/training_status.schema.json`"
    )


def test_concurrent_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    counter = {"n": 0}

    def build() -> Status:
        counter["n"] += 1
        return _status(counter["n"])

    path = tmp_path / "s.json"
    w = StatusWriter(path, build, busy=lambda: True)
    w.flush()
    stop = threading.Event()
    errors: list[str] = []
    reads = {"n": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                json.loads(path.read_bytes())
                reads["n"] += 1
            except ValueError as exc:
                errors.append(str(exc))

    t = threading.Thread(target=reader)
    t.start()
    for _ in range(300):
        w.flush()
    stop.set()
    t.join()
    assert errors == []
    assert reads["n"] > 0
    assert not list(tmp_path.glob("*.tmp")), "temporary files left behind"


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 256 KiB tmpfs, so the disk really fills up (needs root, as in CI)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the disk-full test: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_keeps_previous_file_and_recovers(small_fs: Path) -> None:
    path = small_fs / "training_status.json"
    n = {"v": 1}
    w = StatusWriter(path, lambda: _status(n["v"]), busy=lambda: True)
    assert w.flush()
    before = path.read_bytes()
    filler = _fill(small_fs)
    n["v"] = 2
    assert w.flush() is False
    assert w.disk_full
    assert path.read_bytes() == before  # the old status is intact and valid
    assert json.loads(before)["batch_step"] == 1
    assert not list(small_fs.glob(".*.tmp")), "a partial temporary file was left behind"
    filler.unlink()
    assert w.flush() is True
    assert json.loads(path.read_text())["batch_step"] == 2
    assert not w.disk_full


def test_background_writer_keeps_updated_at_fresh_while_busy(tmp_path: Path) -> None:
    import time

    path = tmp_path / "s.json"
    w = StatusWriter(path, _status, busy=lambda: True, busy_interval=0.2, heartbeat=10)
    w.start()
    try:
        deadline = time.monotonic() + 5
        while w.writes < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        w.stop()
    assert w.writes >= 3
