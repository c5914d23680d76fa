"""`imgtrain status` on status files written by the daemon's own writer.

The files come from the real Progress and StatusWriter (the daemon's code),
with this test process standing in as the daemon: its pid is alive, so the
"running" judgement is real; a finished child process gives a pid that is
gone. The status of a real daemon is covered in tests/e2e/test_cli_daemon.py.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon.ledger.history import ErrorRow
from daemon.status.model import Status
from daemon.status.progress import PhaseCount, Progress, RunPlan
from daemon.status.writer import StatusWriter
from daemon.vocab import DaemonStatus, PhaseState
from tests.commands import cli
from tests.conftest import REPO, write_config


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "config.yaml",
        {
            "inbox_dir": "inbox",
            "data_dir": "data",
            "status_dir": "status",
            "status": {"stale_after_seconds": 30},
        },
    )


def training_progress(tmp_path: Path) -> Progress:
    p = Progress(data_dir=str(tmp_path), costs={"embedding": 0.05, "faces": 0.2})
    p.set_run(RunPlan([3, 4, 5], {"embedding": [10, 10], "faces": [10, 10], "clustering": [5, 5]}))
    p.begin_batch(
        4,
        "beach 2024",
        {
            "embedding": PhaseCount(PhaseState.COMPLETED, 20, 20),
            "faces": PhaseCount(PhaseState.RUNNING, 7, 20),
            "clustering": PhaseCount(PhaseState.PENDING, 0, 5),
        },
    )
    p.phase = "faces"
    p.set_state(DaemonStatus.TRAINING, "Processing 'beach 2024'")
    p.set_queue({"waiting": 1, "running": 1, "completed": 2}, paused=False)
    p.set_errors([ErrorRow(datetime.now(UTC), "UNREADABLE_IMAGE", "truncated JPEG", "b/1.jpg", 3)])
    return p


def write(cfg: Path, progress: Progress, **changes: object) -> Path:
    path = cfg.parent / "status" / "training_status.json"
    StatusWriter(path, progress.snapshot, busy=lambda: True).flush()
    if changes:
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(Status.model_validate(data).model_dump_json(indent=2))
    return path


def test_a_working_daemon_is_shown_with_bars_and_numbers(cfg, capsys, tmp_path) -> None:
    path = write(cfg, training_progress(tmp_path))
    code, out, _ = cli(capsys, cfg, "status")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("training: Processing 'beach 2024'")
    assert "NOT RUNNING" not in out
    assert "Batch 4: beach 2024, phase faces" in out
    assert any(x.startswith("batch ") and "step 27/45" in x and "60.0%" in x for x in lines)
    assert any(x.startswith("queue ") and "batch 2 of 3" in x for x in lines)
    faces = next(x for x in lines if x.startswith("▶ faces"))
    assert "7/20" in faces and "35.0%" in faces and "running" in faces
    assert any("embedding" in x and "100.0%" in x and "completed" in x for x in lines)
    assert any(x.lstrip().startswith("clustering") and "pending" in x for x in lines)
    assert "ETA" in out and "Overall" in out
    assert "Queue: 1 waiting · 1 running · 2 completed · 0 failed · 0 cancelled" in out
    assert "UNREADABLE_IMAGE  batch 3 b/1.jpg  truncated JPEG" in out

    code, out, _ = cli(capsys, cfg, "status", "--json")
    assert code == 0 and out == path.read_text()


def test_a_stall_is_shown_in_red_with_its_reason_and_phase_etas(cfg, capsys, tmp_path) -> None:
    from rich.console import Console

    from daemon.commands.status import view
    from daemon.config import load_config
    from daemon.status.reader import liveness, read_status

    reason = "no step finished for 1m 05s: batch 4 'beach 2024', phase faces, file b/8.jpg"
    write(
        cfg,
        training_progress(tmp_path),
        stalled=True,
        stalled_since=(datetime.now(UTC) - timedelta(seconds=65)).isoformat(),
        stall_reason=reason,
        run={
            "started_at": datetime.now(UTC).isoformat(),
            "batches_done": 1,
            "batches_total": 3,
            "images_done": 27,
            "images_total": 60,
        },
    )
    code, out, _ = cli(capsys, cfg, "status")
    assert code == 0
    assert "STALLED since " in out and reason in out
    assert "1 of 3 batches done, 27 of 60 images" in out
    faces = next(x for x in out.splitlines() if x.startswith("▶ faces"))
    assert "done in" in faces  # the phase's own ETA
    status, _ = read_status(load_config(cfg))
    console = Console(force_terminal=True, color_system="standard", width=200, record=True)
    console.print(view(status, liveness(status, load_config(cfg))))
    stall_line = next(x for x in console.export_text(styles=True).splitlines() if "STALLED" in x)
    assert "\x1b[1;31m" in stall_line  # bold red


@pytest.mark.parametrize("why", ["stale", "pid gone", "stopped"])
def test_a_daemon_that_is_not_running_is_said_so_plainly(cfg, capsys, tmp_path, why) -> None:
    progress = training_progress(tmp_path)
    if why == "stale":
        old = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
        write(cfg, progress, updated_at=old)
        reason = "the status file was last written 5m 00s ago (status.stale_after_seconds is 30)"
    elif why == "pid gone":
        child = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = int(child.stdout)
        snap = json.loads(progress.snapshot().model_dump_json())
        write(cfg, progress, daemon={**snap["daemon"], "pid": pid})
        reason = f"its process (pid {pid}) is gone"
    else:
        progress.end_batch()
        progress.set_state(DaemonStatus.STOPPED, "stopped by SIGTERM")
        write(cfg, progress)
        reason = "it stopped at "
    code, out, _ = cli(capsys, cfg, "status")
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"NOT RUNNING: the daemon is not running — {reason}")
    if why == "stopped":
        assert first.endswith("(stopped by SIGTERM).")
    # Old progress is history, not live bars.
    assert "█" not in out and "░" not in out and "ETA" not in out
    if why != "stopped":
        assert "it resumes when the daemon starts" in out
    assert "Start it with `systemctl start imgtrain` or `imgtrain run`." in out


def test_without_a_status_file_the_command_says_what_to_do(cfg, capsys) -> None:
    code, out, err = cli(capsys, cfg, "status")
    assert code == 1 and out == ""
    assert err.startswith("imgtrain: NOT_FOUND: there is no status file at ")
    assert "-> The daemon has not run with this config" in err


def test_watch_redraws_until_interrupted(cfg, tmp_path) -> None:
    progress = training_progress(tmp_path)
    write(cfg, progress)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daemon",
            "--config",
            str(cfg),
            "status",
            "--watch",
            "--interval",
            "0.1",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C as a terminal delivers it, whatever disposition the test runner inherited
        # (a runner started in the background has SIGINT ignored, and children keep that).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    # stderr is drained too: a full pipe would block the watcher and hide why.
    errors: list[str] = []
    threading.Thread(target=lambda: errors.extend(proc.stderr), daemon=True).start()

    def wait_line(text: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if text in lines.get(timeout=0.2):
                    return
            except queue.Empty:
                continue
        raise AssertionError(f"no line with {text!r}")

    # A stand-in daemon process: when it dies the file does not change, and the
    # watcher must still notice.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        wait_line("Processing 'beach 2024'")
        progress.counts["faces"].step = 12
        progress.set_state(DaemonStatus.PAUSED, "Paused between chunks")
        snap = json.loads(progress.snapshot().model_dump_json())
        write(cfg, progress, daemon={**snap["daemon"], "pid": stand_in.pid})
        wait_line("paused: Paused between chunks")
        stand_in.kill()
        stand_in.wait(timeout=10)
        wait_line(f"NOT RUNNING: the daemon is not running — its process (pid {stand_in.pid})")
    finally:
        stand_in.kill()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    assert code == 0, "".join(errors)
