"""The pipeline in-process: a real ledger, real JPEGs decoded by the real decoder, and
small phases of our own that record what they were given.

The phases are test phases, not stand-ins for a library: the pipeline's
contract is with the phase interface (`daemon/phases/base.py`), and these
implement it plainly so each test can act at a chosen moment (after a chunk:
stop, pause, cancel) and see exactly which images each phase saw.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.config import Config
from daemon.errors import Cancelled, Interrupted
from daemon.ledger.ledger import Ledger
from daemon.phases.base import BatchInfo, DecodedImage, PhaseContext
from daemon.phases.control import Control
from daemon.phases.pipeline import Pipeline
from daemon.status.progress import Progress
from daemon.vocab import (
    PHASES,
    DaemonStatus,
    FileEntry,
    ImageOutcome,
    ImageState,
    PhaseName,
    PhaseState,
)
from tests.conftest import make_jpeg
from tests.helpers import wait_for

CHUNK = 2
N_IMAGES = 5


class RecordingPhase:
    """An image phase that marks every image done, remembering which it saw."""

    def __init__(self, name: PhaseName, after_chunk: Callable[[], None] | None = None) -> None:
        self.name = name
        self.after_chunk = after_chunk
        self.seen: list[str] = []
        self.cleanups = 0

    def setup(self, ctx: PhaseContext) -> None:
        pass

    def prepare(self, image: DecodedImage) -> int:
        return image.width

    def process(self, batch: BatchInfo, images: list[DecodedImage], report) -> list[ImageOutcome]:
        outcomes = []
        for img in images:
            assert img.prepared[self.name] == img.width  # prepare ran in the decode worker
            self.seen.append(img.rel_path)
            report(1)
            outcomes.append(ImageOutcome(img.image_id, ImageState.DONE))
        if self.after_chunk:
            self.after_chunk()
        return outcomes

    def cleanup(self) -> None:
        self.cleanups += 1


class CountingBatchPhase:
    name = PhaseName.CLUSTERING
    STEPS = 2

    def __init__(self) -> None:
        self.runs = 0

    def setup(self, ctx: PhaseContext) -> None:
        pass

    def total_steps(self, batch: BatchInfo) -> int:
        return self.STEPS

    def run(self, batch: BatchInfo, report, describe) -> None:
        self.runs += 1
        for i in range(self.STEPS):
            describe(f"sub-step {i}")
            report(1)

    def cleanup(self) -> None:
        pass


class Rig:
    """One claimed batch in a real ledger, and pipelines to run it."""

    def __init__(self, tmp: Path, corrupt: int | None = None) -> None:
        self.config = Config.model_validate(
            {"data_dir": tmp / "data", "clip": {"batch_size": CHUNK}, "decode": {"workers": 1}}
        )
        self.ledger = Ledger(tmp / "ledger.sqlite3")
        self.stop = threading.Event()
        home = tmp / "batch"
        entries = []
        for i in range(N_IMAGES):
            path = make_jpeg(home / f"{i}.jpg", seed=i)
            if i == corrupt:
                path.write_bytes(path.read_bytes()[:200])  # cut off mid-copy
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            entries.append(FileEntry(path.name, digest, path.stat().st_size, "jpeg"))
        self.batch_id = self.ledger.claims.reserve_batch("batch", "folder", [str(home)])
        self.ledger.claims.set_batch_path(self.batch_id, home)
        self.ledger.claims.finish_claim(self.batch_id, entries, [], list(PHASES))
        self.progress = Progress(data_dir=str(tmp), costs={}, clock=lambda: 0.0)

    def pipeline(
        self, after_chunk: Callable[[], None] | None = None
    ) -> tuple[Pipeline, list[RecordingPhase], CountingBatchPhase]:
        image = [
            RecordingPhase(PhaseName.EMBEDDING),
            RecordingPhase(PhaseName.FACES, after_chunk),
        ]
        batch = CountingBatchPhase()
        ctx = PhaseContext(config=self.config, store=None, ledger=self.ledger, models=None)
        control = Control(self.ledger, self.stop, self.progress, lambda: None, 0.01)
        return Pipeline(ctx, image, [batch], self.progress, control, lambda: None), image, batch

    def run(self, pipeline: Pipeline) -> None:
        batch = self.ledger.start_batch(self.batch_id)
        pipeline.run(batch)

    def steps(self) -> dict[str, list[int]]:
        return self.ledger.step_counts([self.batch_id])[self.batch_id]

    def phase_states(self) -> dict[str, str]:
        return {p: r["state"] for p, r in self.ledger.batch_phases(self.batch_id).items()}


def test_every_image_goes_through_every_phase_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    pipeline, (emb, faces), clustering = rig.pipeline()
    rig.run(pipeline)
    names = [f"{i}.jpg" for i in range(N_IMAGES)]
    assert emb.seen == names and faces.seen == names
    assert clustering.runs == 1
    assert rig.steps() == {"embedding": [5, 5], "faces": [5, 5], "clustering": [2, 2]}
    assert rig.phase_states() == dict.fromkeys(PHASES, "completed")
    assert all(c.status == PhaseState.COMPLETED for c in rig.progress.counts.values())
    assert emb.cleanups == faces.cleanups == 1


def test_a_stopped_batch_resumes_at_its_first_unfinished_image(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    pipeline, (emb, faces), _ = rig.pipeline(after_chunk=rig.stop.set)
    with pytest.raises(Interrupted):
        rig.run(pipeline)
    assert faces.seen == ["0.jpg", "1.jpg"]  # the chunk finished and was recorded
    assert rig.steps()["faces"] == [2, 5]
    assert emb.cleanups == 1  # cleanup runs however the batch ends

    rig.stop.clear()
    again, (emb2, faces2), clustering = rig.pipeline()
    rig.run(again)
    assert emb2.seen == faces2.seen == ["2.jpg", "3.jpg", "4.jpg"]  # not one image twice
    assert sorted(faces.seen + faces2.seen) == [f"{i}.jpg" for i in range(N_IMAGES)]
    assert clustering.runs == 1
    assert rig.phase_states() == dict.fromkeys(PHASES, "completed")


def test_a_photo_that_cannot_be_decoded_is_recorded_and_the_batch_goes_on(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path, corrupt=1)
    pipeline, (emb, faces), _ = rig.pipeline()
    rig.run(pipeline)
    assert "1.jpg" not in emb.seen and "1.jpg" not in faces.seen
    assert len(faces.seen) == N_IMAGES - 1
    assert rig.steps()["embedding"] == [5, 5]  # the failed step is done: its work is over
    errors = rig.ledger.query("SELECT file, code FROM errors WHERE batch_id=?", (rig.batch_id,))
    assert [(e["file"], e["code"]) for e in errors] == [("1.jpg", "UNREADABLE_IMAGE")]
    assert rig.phase_states() == dict.fromkeys(PHASES, "completed")


def test_pause_waits_between_chunks_and_resume_goes_on(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    pipeline, (_, faces), _ = rig.pipeline(after_chunk=lambda: rig.ledger.set_paused(True))
    runner = threading.Thread(target=rig.run, args=(pipeline,))
    runner.start()
    try:
        wait_for(lambda: rig.progress.status == DaemonStatus.PAUSED, 20, "the pipeline to pause")
        assert faces.seen == ["0.jpg", "1.jpg"]
        assert rig.steps()["faces"] == [2, 5]  # what was done before the pause is recorded
        pipeline.image_phases[1].after_chunk = None  # type: ignore[attr-defined]
        rig.ledger.set_paused(False)
        runner.join(timeout=30)
        assert not runner.is_alive()
    finally:
        rig.ledger.set_paused(False)
        rig.stop.set()
        runner.join(timeout=30)
    assert len(faces.seen) == N_IMAGES
    assert rig.phase_states() == dict.fromkeys(PHASES, "completed")


def test_cancel_stops_at_the_next_chunk_and_keeps_what_is_done(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    pipeline, (_, faces), clustering = rig.pipeline(
        after_chunk=lambda: rig.ledger.request_cancel(rig.batch_id)
    )
    with pytest.raises(Cancelled):
        rig.run(pipeline)
    assert faces.seen == ["0.jpg", "1.jpg"]
    assert rig.steps()["faces"] == [2, 5]
    assert clustering.runs == 0
    assert [p.rel_path for p in rig.ledger.pending_images(rig.batch_id)] == [
        "2.jpg",
        "3.jpg",
        "4.jpg",
    ]
