"""The metrics file: the status's numbers in Prometheus's text format, written beside the status."""

from __future__ import annotations

import re
from pathlib import Path

from daemon.ledger.history import BatchSummary
from daemon.status.metrics import render
from daemon.status.progress import PhaseCount, Progress, RunPlan
from daemon.status.writer import StatusWriter, atomic_write
from daemon.vocab import DaemonStatus, PhaseState

SAMPLE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (-?[0-9.]+(e[+-]?[0-9]+)?|NaN)$")


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def _training() -> Progress:
    clock = Clock()
    p = Progress(data_dir="/", clock=clock)
    p.set_run(RunPlan([1, 2], {"embedding": [0, 8], "faces": [0, 8], "clustering": [0, 5]}))
    p.set_state(DaemonStatus.TRAINING, "Processing 'a'")
    p.begin_batch(
        1,
        'a "quoted" name',
        {
            "embedding": PhaseCount(PhaseState.RUNNING, 0, 8),
            "faces": PhaseCount(PhaseState.PENDING, 0, 8),
            "clustering": PhaseCount(PhaseState.PENDING, 0, 5),
        },
    )
    p.set_queue({"waiting": 1, "running": 1, "completed": 4}, paused=False)
    clock.now += 2.0
    p.advance("embedding", 8)
    p.phase_started("faces")
    clock.now += 0.5
    p.advance("faces", 1, faces=3)
    return p


def _samples(text: str) -> dict[str, float]:
    out, declared = {}, set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            declared.add(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not a Prometheus sample: {line!r}"
        assert m.group(1) in declared, f"{m.group(1)} has no TYPE line before it"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_the_numbers_of_a_working_daemon() -> None:
    p = _training()
    s = _samples(render(p.snapshot(), p.counters))
    assert s['imgtrain_status{status="training"}'] == 1
    assert s['imgtrain_status{status="idle"}'] == 0
    assert s['imgtrain_queue_batches{state="waiting"}'] == 1
    assert s['imgtrain_queue_batches{state="completed"}'] == 4
    assert s['imgtrain_phase_steps_total{phase="embedding"}'] == 8
    assert s['imgtrain_phase_seconds_total{phase="faces"}'] == 0.5
    assert s["imgtrain_faces_found_total"] == 3
    assert s["imgtrain_images_processed_total"] == 1  # through faces, the last image phase
    assert s["imgtrain_eta_seconds"] > 0 and 0 < s["imgtrain_run_progress_ratio"] < 1
    assert s['imgtrain_phase_eta_seconds{phase="faces"}'] > 0
    assert s["imgtrain_stalled"] == 0


def test_an_idle_daemon_has_no_eta_and_the_last_batch() -> None:
    p = Progress(data_dir="/")
    p.set_state(DaemonStatus.IDLE, "Idle")
    p.set_last_batch(
        BatchSummary(
            batch_id=3,
            name="x",
            state="completed",
            images=10,
            processed=10,
            duplicates=0,
            failed_images=0,
            faces=2,
            seconds=4.5,
            images_per_second=2.2,
            finished_at=None,
            error=None,
        )
    )
    s = _samples(render(p.snapshot(), p.counters))
    assert "imgtrain_eta_seconds" not in s
    assert s["imgtrain_last_batch_duration_seconds"] == 4.5
    assert s["imgtrain_last_batch_images"] == 10


def test_written_atomically_after_each_status_write(tmp_path: Path) -> None:
    p = _training()
    prom = tmp_path / "imgtrain.prom"
    writer = StatusWriter(
        tmp_path / "training_status.json",
        p.snapshot,
        busy=lambda: True,
        after=lambda status: atomic_write(prom, render(status, p.counters).encode()),
    )
    assert writer.flush()
    assert _samples(prom.read_text())['imgtrain_status{status="training"}'] == 1
    assert [f.name for f in tmp_path.iterdir() if f.name.startswith(".")] == []
