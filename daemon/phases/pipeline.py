"""Runs one batch through the phases, in order, resuming where it stopped.

Image phases (embedding, faces) share one decode of each photo: the
decode-ahead generator (`daemon.phases.ahead`) decodes chunk i+1, and runs
each phase's `prepare` on it (CLIP's preprocessing), while the models work on
chunk i; every image phase processes the chunk before the next is taken, so
memory stays bounded by a few chunks. Batch phases (clustering) run once the
image phases are done.

Steps are counted from the ledger when a batch starts (so a resumed batch
starts where it stopped) and advanced as phases report. A phase's state
changes through one call, `_mark`, which tells the progress channel, the
ledger and the status writer together. Control requests (shutdown, pause,
cancel) are honoured between chunks, after the chunk's outcomes are in the
ledger, so nothing is left half-recorded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from daemon.errors import ImageError
from daemon.ledger.ledger import Ledger
from daemon.ledger.workload import PendingFile, pending_files
from daemon.phases import decoding
from daemon.phases.ahead import decode_ahead
from daemon.phases.base import (
    BatchInfo,
    BatchPhase,
    DecodedImage,
    ImagePhase,
    PhaseContext,
    Report,
)
from daemon.phases.control import Control
from daemon.phases.workload import Workload
from daemon.status.progress import PhaseCount, Progress
from daemon.vocab import (
    PHASES,
    Batch,
    DaemonStatus,
    ImageOutcome,
    ImageState,
    PendingImage,
    PhaseState,
    is_batch_phase,
)

log = logging.getLogger(__name__)

DONE_STATES = (PhaseState.SKIPPED, PhaseState.COMPLETED)


@dataclass(frozen=True)
class DecodeFailure:
    image: PendingImage
    error: ImageError


class ChunkRunner(Protocol):
    """Runs a batch's image phases elsewhere (`daemon.workers`: RQ workers). It hands every
    outcome back through `Pipeline.record` / `record_failure`, so the ledger, the progress
    and the control checks are the same as when the phases run here."""

    def setup(self) -> None: ...

    def run(self, pipeline: Pipeline, info: BatchInfo, pending: list[PendingImage]) -> None: ...


class Pipeline:
    def __init__(
        self,
        ctx: PhaseContext,
        image_phases: Sequence[ImagePhase],
        batch_phases: Sequence[BatchPhase],
        progress: Progress,
        control: Control,
        poke: Callable[[], None],
        runner: ChunkRunner | None = None,
        workload: Workload | None = None,
    ) -> None:
        self.ctx = ctx
        self.runner = runner
        self.ledger: Ledger = ctx.ledger
        self.image_phases = list(image_phases)
        self.batch_phases = list(batch_phases)
        self.progress = progress
        self.control = control
        self.poke = poke
        cfg = ctx.config
        # Pillow until setup() knows where the models run (`decode.device`).
        self.decoding = decoding.pillow(cfg)
        self.workers = cfg.decode.workers
        self.workload = workload or Workload(cfg.decode)

    def setup(self) -> None:
        """Load every phase's models; raises ModelUnavailable / ModelMismatch."""
        # With a runner the image phases' models live on the workers, not here.
        local = self.image_phases if self.runner is None else []
        for phase in [*local, *self.batch_phases]:
            phase.setup(self.ctx)
        clip = getattr(self.ctx.models, "loaded_clip", None)
        self.decoding = decoding.choose(self.ctx.config, clip)
        log.info("decoding: %s, %d images a chunk", self.decoding.where, self.decoding.chunk)
        if self.runner is not None:
            self.runner.setup()

    def counts_for(self, batch: Batch) -> dict[str, PhaseCount]:
        steps = self.ledger.step_counts([batch.batch_id])[batch.batch_id]
        states = self.ledger.batch_phases(batch.batch_id)
        counts: dict[str, PhaseCount] = {}
        for name in PHASES:
            done, total = steps[name]
            state = PhaseState(states[name]["state"]) if name in states else PhaseState.SKIPPED
            if is_batch_phase(name) and state not in DONE_STATES:
                # A batch phase restarts from its first sub-step (it is idempotent).
                total = self.batch_phase(name).total_steps(self.info(batch))
                done = 0
            counts[name] = PhaseCount(status=state, step=done, total=total)
        return counts

    def batch_phase(self, name: str) -> BatchPhase:
        return next(p for p in self.batch_phases if p.name == name)

    @staticmethod
    def info(batch: Batch) -> BatchInfo:
        return BatchInfo(batch.batch_id, batch.name, Path(batch.path or ""))

    # -- running -------------------------------------------------------------
    def run(self, batch: Batch) -> None:
        info = self.info(batch)
        files: list[PendingFile] = []
        try:
            pending = self.ledger.pending_images(batch.batch_id)
            # What the pending photos are made of (sizes, from their headers): the ETA's input.
            files = pending_files(self.ledger, [batch.batch_id]).get(batch.batch_id, [])
            work = self.workload.batch_work(info.path, files)
            self.progress.begin_batch(batch.batch_id, batch.name, self.counts_for(batch), work)
            self.poke()
            if pending:
                # Decoding the first chunk is the first phase's work: say so from the start.
                first = next(
                    p.name for p in self.image_phases if any(p.name in i.phases for i in pending)
                )
                self._mark(info, first, PhaseState.RUNNING)
                self._run_image_phases(info, pending)
            for phase in self.image_phases:
                if self.progress.counts[phase.name].status not in DONE_STATES:
                    self._mark(info, phase.name, PhaseState.COMPLETED)
            self.control.checkpoint(info.batch_id, "before clustering")
            for batch_phase in self.batch_phases:
                self._run_batch_phase(info, batch_phase)
        finally:
            self.workload.forget(files)
            for phase in [*self.image_phases, *self.batch_phases]:
                phase.cleanup()

    def _mark(
        self, info: BatchInfo, name: str, state: PhaseState, *, add_seconds: float = 0.0
    ) -> None:
        """One phase changes state: in the progress channel, the ledger and the status file."""
        count = self.progress.counts[name]
        if state == PhaseState.RUNNING:
            self.progress.phase_started(name, count.total)
        else:
            self.progress.phase_finished(name, state)
        self.ledger.set_batch_phase(
            info.batch_id,
            name,
            state,
            step=count.step,
            total_steps=count.total,
            add_seconds=add_seconds,
        )
        self.poke()

    def _start(self, info: BatchInfo, name: str) -> None:
        """Mark `name` running unless it is already the running phase."""
        if self.progress.phase != name or self.progress.counts[name].status == PhaseState.PENDING:
            self._mark(info, name, PhaseState.RUNNING)

    def _run_image_phases(self, info: BatchInfo, pending: list[PendingImage]) -> None:
        if self.runner is not None:
            self.runner.run(self, info, pending)
            return
        chunks = decode_ahead(
            pending, partial(self._decode, info), chunk=self.decoding.chunk, workers=self.workers
        )
        with contextlib.closing(chunks):
            for results in chunks:
                self._process_chunk(info, results)
                self.control.checkpoint(info.batch_id, "between chunks")

    def _decode(self, info: BatchInfo, item: PendingImage) -> DecodedImage | DecodeFailure:
        path = info.path / item.rel_path
        # A photo decoded on the GPU is copied back only if a phase needs it on the host.
        host = any(
            p.name in item.phases and not getattr(p, "takes_pixels", False)
            for p in self.image_phases
        )
        # CPU time, not wall time: the decode model learns what a photo costs, whatever
        # else shares the cores meanwhile.
        cpu0 = time.thread_time()
        try:
            d = self.decoding.decode(path, host)
        except ImageError as exc:
            self.progress.decoded(item.image_id, time.thread_time() - cpu0, ok=False)
            return DecodeFailure(item, exc)
        decoded = DecodedImage(
            image_id=item.image_id,
            sha256=item.sha256,
            path=path,
            rel_path=item.rel_path,
            image=d.image,
            width=d.width,
            height=d.height,
            scale=d.scale,
            captured_at=d.captured_at,
            pending=item.phases,
            pixels=d.pixels,
        )
        try:
            for phase in self.image_phases:
                if phase.name in decoded.pending:
                    decoded.prepared[phase.name] = phase.prepare(decoded)
        except ImageError as exc:
            if d.image is not None:
                d.image.close()
            self.progress.decoded(item.image_id, time.thread_time() - cpu0, ok=False)
            return DecodeFailure(item, exc)
        finally:
            decoded.pixels = None  # prepared from; GPU memory is not held for the chunk
        self.progress.decoded(item.image_id, time.thread_time() - cpu0)
        return decoded

    def _process_chunk(self, info: BatchInfo, results: list[DecodedImage | DecodeFailure]) -> None:
        decoded = [r for r in results if isinstance(r, DecodedImage)]
        for failure in results:
            if isinstance(failure, DecodeFailure):
                self._record_decode_failure(info, failure)
        try:
            for phase in self.image_phases:
                todo = [d for d in decoded if phase.name in d.pending]
                if not todo:
                    continue
                self._start(info, phase.name)
                outcomes = phase.process(info, todo, self._reporter(phase.name))
                if len(outcomes) != len(todo):
                    raise RuntimeError(
                        f"{phase.name} returned {len(outcomes)} outcomes for {len(todo)}"
                    )
                self.ledger.record_outcomes(info.batch_id, phase.name, outcomes)
        finally:
            for d in decoded:
                if d.image is not None:
                    d.image.close()
                d.prepared.clear()

    # -- outcomes computed by a chunk runner, recorded as the local path records them
    def record(self, info: BatchInfo, phase: str, outcomes: list[ImageOutcome]) -> None:
        self._start(info, phase)
        self.ledger.record_outcomes(info.batch_id, phase, outcomes)
        # Faces found elsewhere still teach the ETA what a face costs.
        found = [o.detail["faces"] for o in outcomes if "faces" in o.detail]
        self.progress.advance(phase, len(outcomes), faces=sum(found) if found else None)

    def record_failure(self, info: BatchInfo, item: PendingImage, error: ImageError) -> None:
        self._record_decode_failure(info, DecodeFailure(item, error))

    def checkpoint(self, info: BatchInfo) -> None:
        self.control.checkpoint(info.batch_id, "between chunks")

    def _reporter(self, phase: str) -> Report:
        def report(n: int, /, *, faces: int | None = None) -> None:
            self.progress.advance(phase, n, faces=faces)

        return report

    def _record_decode_failure(self, info: BatchInfo, failure: DecodeFailure) -> None:
        item, exc = failure.image, failure.error
        phases = [p.name for p in self.image_phases if p.name in item.phases]
        for i, phase in enumerate(phases):
            self._start(info, phase)
            outcome = ImageOutcome(
                image_id=item.image_id,
                state=ImageState.FAILED,
                error_code=str(exc.code),
                message=exc.message,
            )
            # One error row per file, not one per phase.
            self.ledger.record_outcomes(info.batch_id, phase, [outcome], log_errors=i == 0)
            # Its decode failed in a worker: the wait since the last report is the chunk's.
            self.progress.advance(phase, 1, timed=False)
        log.warning("skipped %s: %s %s", item.rel_path, exc.code, exc.message)

    def _run_batch_phase(self, info: BatchInfo, phase: BatchPhase) -> None:
        name = str(phase.name)
        count = self.progress.counts[name]
        if count.status in DONE_STATES:
            return
        self._mark(info, name, PhaseState.RUNNING)
        t0 = time.monotonic()

        def report(n: int, /, *, faces: int | None = None) -> None:
            self.progress.advance(name, n)
            self.ledger.set_batch_phase(info.batch_id, name, PhaseState.RUNNING, step=count.step)

        def describe(text: str) -> None:
            self.progress.set_state(DaemonStatus.TRAINING, f"Clustering '{info.name}': {text}")

        phase.run(info, report, describe)
        self._mark(info, name, PhaseState.COMPLETED, add_seconds=time.monotonic() - t0)
