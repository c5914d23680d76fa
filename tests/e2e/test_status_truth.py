"""A real daemon's status, read as closely as a dashboard can: no write contradicts itself.

The moments that used to contradict: a folder claimed while the daemon was
idle (`idle` with one waiting), the hand-over from one batch to the next, and
the run's last write (`training` with no batch, at 100%). Every distinct
snapshot the reader saw is checked (`tests.helpers.contradictions`), and the
metrics file beside the status is read as node_exporter would.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import StatusReader, contradictions

PROM_LINE = re.compile(r"^[a-z_]+(\{[^}]*\})? (-?[0-9.]+(e[+-]?[0-9]+)?|NaN)$")


def _folder(root: Path, name: str, n: int, seed: int, faces: list[Path] = ()) -> Path:
    folder = root / name
    for i in range(n):
        make_jpeg(folder / f"{name}-{i:02d}.jpg", size=(480, 360), seed=seed + i)
    for f in faces:
        shutil.copy(f, folder / f.name)
    return folder


def _runs(snapshots: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The snapshots of each run: from the first with a run to the idle write that ends it."""
    runs, current = [], None
    for s in snapshots:
        if s.get("run") is not None:
            current = current if current is not None else []
            current.append(s)
        elif current is not None:
            current.append(s)
            runs.append(current)
            current = None
    return runs


def test_every_write_of_a_claim_a_hand_over_and_a_run_end_is_consistent(
    daemon_factory, tmp_path: Path, shared_photos: Path
) -> None:
    d: Daemon = daemon_factory(status={"heartbeat_seconds": 1, "busy_interval_seconds": 0.25})
    src = tmp_path / "src"
    faces = sorted((shared_photos / "mixed").glob("*.jpg"))[:3]
    first = _folder(src, "first", 12, seed=10, faces=faces)
    second = _folder(src, "second", 10, seed=40)
    third = _folder(src, "third", 9, seed=70)
    d.start()
    reader = StatusReader(d.status_path).start()
    try:
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        # A claim while idle, then two folders together: a run of two batches.
        os.rename(first, d.inbox / "first")
        d.wait_idle_with(completed=1, timeout=180)
        os.rename(second, d.inbox / "second")
        os.rename(third, d.inbox / "third")
        final = d.wait_idle_with(completed=3, timeout=240)
        prom = (d.status_path.parent / "imgtrain.prom").read_text()
    finally:
        reader.stop(check=False)  # checked below, with the details
    assert reader.errors == []
    bad = [(c, s["status"], s["batch_id"]) for s in reader.snapshots for c in contradictions(s)]
    assert bad == [], bad[:5]

    runs = _runs(reader.snapshots)
    assert len(runs) == 2, [len(r) for r in runs]
    for run in runs:
        end = run[-1]
        # Straight from the last batch to idle: the run's summary is in last_batch.
        assert end["status"] == "idle" and end["batch_id"] is None and end["run"] is None
        assert end["last_batch"]["state"] == "completed"
        working = [s for s in run if s["status"] == "training"]
        assert working and all(s["batch_id"] is not None for s in working)
        last_run = working[-1]["run"]
        assert last_run["batches_total"] in (1, 2)
        assert end["last_batch"]["batch_id"] == max(s["batch_id"] for s in working)
    two = runs[1]
    assert max(s["run"]["batches_total"] for s in two if s["run"]) == 2
    assert max(s["run"]["images_total"] for s in two if s["run"]) == 19
    assert any(s["run"]["batches_done"] == 1 and s["batch_id"] for s in two if s["run"])
    # Phase ETAs while working: each phase is done no later than the run.
    for s in (s for s in reader.snapshots if s["status"] == "training" and s["phases"]):
        run_eta = s["overall_progress"]["eta_seconds"]
        for ph in s["phases"].values():
            if ph["eta_seconds"] is not None and run_eta is not None:
                assert ph["eta_seconds"] <= run_eta + 0.2, s
    assert final["totals"]["faces"] > 0, "the real photos' faces were found"

    # The metrics file: Prometheus text format, the status's numbers.
    samples = [x for x in prom.splitlines() if x and not x.startswith("#")]
    assert samples and all(PROM_LINE.match(x) for x in samples), samples
    assert 'imgtrain_queue_batches{state="completed"} 3' in samples
    assert "imgtrain_stalled 0" in samples
    assert 'imgtrain_status{status="idle"} 1' in samples
    assert any(x.startswith("imgtrain_images_processed_total ") for x in samples)
    assert any(x.startswith('imgtrain_phase_seconds_total{phase="faces"} ') for x in samples)
    assert any(x.startswith("imgtrain_last_batch_duration_seconds ") for x in samples)
    assert d.terminate() == 0
