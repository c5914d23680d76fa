"""Runs one batch through the phases, in order, resuming where it stopped.

Image phases (embedding, faces) share one decode of each photo: a small thread
pool decodes chunk i+1, and runs each phase's `prepare` on it (CLIP's
preprocessing), while the models work on chunk i; every image phase processes
the chunk before the next is taken, so memory stays bounded by a few chunks.
Batch phases (clustering) run once the image phases are done.

Steps are counted from the ledger when a batch starts (so a resumed batch
starts where it stopped) and advanced as phases report. Control requests
(shutdown, pause, cancel) are honoured between chunks, after the chunk's
outcomes are in the ledger, so nothing is left half-recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import Cancelled, ImageError, Interrupted
from daemon.imaging.decode import decode
from daemon.ledger.ledger import Ledger
from daemon.phases.base import (
    BatchInfo,
    BatchPhase,
    DecodedImage,
    ImageOutcome,
    ImagePhase,
    PhaseContext,
)
from daemon.status.progress import PHASES, PhaseCount, Progress
from daemon.vocab import Batch, DaemonStatus, ImageState, PhaseState

log = logging.getLogger(__name__)

RUN_AHEAD = 2  # chunks decoded ahead of the models


@dataclass(frozen=True)
class DecodeFailure:
    row: Any
    error: ImageError


class Control:
    """Between-step checks: shutdown, pause and cancel requests from the CLI."""

    def __init__(
        self,
        ledger: Ledger,
        stop: threading.Event,
        progress: Progress,
        poke: Callable[[], None],
        poll_seconds: float = 0.5,
    ) -> None:
        self.ledger, self.stop, self.progress, self.poke = ledger, stop, progress, poke
        self.poll_seconds = poll_seconds

    def checkpoint(self, batch_id: int, where: str) -> None:
        if self.stop.is_set():
            raise Interrupted(where)
        if self.ledger.cancel_requested(batch_id):
            raise Cancelled(f"batch {batch_id} cancelled {where}")
        if not self.ledger.is_paused():
            return
        status, message = self.progress.status, self.progress.message
        self.progress.set_state(
            DaemonStatus.PAUSED, f"Paused {where}; `imgtrain queue resume` continues"
        )
        self.poke()
        log.info("paused %s", where)
        while self.ledger.is_paused():
            if self.stop.wait(self.poll_seconds):
                raise Interrupted(where)
            if self.ledger.cancel_requested(batch_id):
                raise Cancelled(f"batch {batch_id} cancelled while paused")
        log.info("resumed")
        self.progress.set_state(status, message)
        self.poke()


class Pipeline:
    def __init__(
        self,
        ctx: PhaseContext,
        image_phases: Sequence[ImagePhase],
        batch_phases: Sequence[BatchPhase],
        progress: Progress,
        control: Control,
        poke: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.ledger: Ledger = ctx.ledger
        self.image_phases = list(image_phases)
        self.batch_phases = list(batch_phases)
        self.progress = progress
        self.control = control
        self.poke = poke
        cfg = ctx.config
        self.chunk = cfg.clip.batch_size
        self.decode_cfg = cfg.decode
        self.workers = cfg.decode.workers

    def setup(self) -> None:
        """Load every phase's models; raises ModelUnavailable / ModelMismatch."""
        for phase in [*self.image_phases, *self.batch_phases]:
            phase.setup(self.ctx)

    def counts_for(self, batch: Batch) -> dict[str, PhaseCount]:
        steps = self.ledger.step_counts([batch.batch_id])[batch.batch_id]
        states = self.ledger.batch_phases(batch.batch_id)
        counts: dict[str, PhaseCount] = {}
        for name in PHASES:
            done, total = steps[name]
            state = states[name]["state"] if name in states else PhaseState.SKIPPED
            if name == "clustering" and state != PhaseState.COMPLETED and state != "skipped":
                total = self.batch_phase(name).total_steps(self.info(batch))
                done = 0  # clustering restarts from its first sub-step (it is idempotent)
            status = PhaseState(state) if state != PhaseState.RUNNING else PhaseState.RUNNING
            counts[name] = PhaseCount(status=status, step=done, total=total)
        return counts

    def batch_phase(self, name: str) -> BatchPhase:
        return next(p for p in self.batch_phases if p.name == name)

    @staticmethod
    def info(batch: Batch) -> BatchInfo:
        return BatchInfo(batch.batch_id, batch.name, Path(batch.path or ""))

    # -- running -------------------------------------------------------------
    def run(self, batch: Batch) -> None:
        info = self.info(batch)
        self.progress.begin_batch(batch.batch_id, batch.name, self.counts_for(batch))
        self.poke()
        rows = self.ledger.pending_images(batch.batch_id)
        if rows:
            # Decoding the first chunk is the first phase's work: say so from the start.
            first = next(
                p.name for p in self.image_phases if any(p.name in r["phases"] for r in rows)
            )
            self._start_phase(info, first)
            self._run_image_phases(info, rows)
        for phase in self.image_phases:
            self._finish_phase(info, phase.name)
        self.control.checkpoint(info.batch_id, "before clustering")
        for phase in self.batch_phases:
            self._run_batch_phase(info, phase)
        for phase in [*self.image_phases, *self.batch_phases]:
            phase.cleanup()

    def _finish_phase(self, info: BatchInfo, name: str) -> None:
        count = self.progress.counts[name]
        if count.status in (PhaseState.SKIPPED, PhaseState.COMPLETED):
            return
        self.progress.phase_finished(name, PhaseState.COMPLETED)
        self.ledger.set_batch_phase(info.batch_id, name, PhaseState.COMPLETED, step=count.step)
        self.poke()

    def _run_image_phases(self, info: BatchInfo, rows: list[Any]) -> None:
        chunks = [rows[i : i + self.chunk] for i in range(len(rows)) if i % self.chunk == 0]
        with ThreadPoolExecutor(self.workers, thread_name_prefix="decode") as pool:
            ahead: deque[list[Future[Any]]] = deque()
            todo = deque(chunks)
            while todo or ahead:
                while todo and len(ahead) < RUN_AHEAD:
                    ahead.append([pool.submit(self._decode, info, row) for row in todo.popleft()])
                futures = ahead.popleft()
                try:
                    self._process_chunk(info, futures)
                except BaseException:
                    for pending in ahead:
                        for fut in pending:
                            fut.cancel()
                    raise
                self.control.checkpoint(info.batch_id, "between chunks")

    def _decode(self, info: BatchInfo, row: Any) -> DecodedImage | DecodeFailure:
        path = info.path / row["rel_path"]
        try:
            d = decode(path, self.decode_cfg)
        except ImageError as exc:
            return DecodeFailure(row, exc)
        decoded = DecodedImage(
            image_id=row["image_id"],
            sha256=row["sha256"],
            path=path,
            rel_path=row["rel_path"],
            image=d.image,
            width=d.width,
            height=d.height,
            scale=d.scale,
            captured_at=d.captured_at,
            pending=frozenset(row["phases"].split(",")),
        )
        try:
            for phase in self.image_phases:
                if phase.name in decoded.pending:
                    decoded.prepared[phase.name] = phase.prepare(decoded)
        except ImageError as exc:
            d.image.close()
            return DecodeFailure(row, exc)
        return decoded

    def _process_chunk(self, info: BatchInfo, futures: list[Future[Any]]) -> None:
        results = [fut.result() for fut in futures]
        decoded = [r for r in results if isinstance(r, DecodedImage)]
        for failure in results:
            if isinstance(failure, DecodeFailure):
                self._record_decode_failure(info, failure)
        for phase in self.image_phases:
            todo = [d for d in decoded if phase.name in d.pending]
            if not todo:
                continue
            self._start_phase(info, phase.name)
            outcomes = phase.process(
                info, todo, lambda n, p=phase.name: self.progress.advance(p, n)
            )
            if len(outcomes) != len(todo):
                raise RuntimeError(
                    f"{phase.name} returned {len(outcomes)} outcomes for {len(todo)}"
                )
            self.ledger.record_outcomes(info.batch_id, phase.name, outcomes)
        for d in decoded:
            d.image.close()
            d.prepared.clear()

    def _start_phase(self, info: BatchInfo, name: str) -> None:
        if self.progress.phase != name or self.progress.counts[name].status == PhaseState.PENDING:
            self.progress.phase_started(name)
            self.ledger.set_batch_phase(info.batch_id, name, PhaseState.RUNNING)
            self.poke()

    def _record_decode_failure(self, info: BatchInfo, failure: DecodeFailure) -> None:
        row, exc = failure.row, failure.error
        enabled = {str(ph.name) for ph in self.image_phases}
        phases = [p for p in row["phases"].split(",") if p in enabled]
        for i, phase in enumerate(phases):
            self._start_phase(info, phase)
            outcome = ImageOutcome(
                image_id=row["image_id"],
                state=ImageState.FAILED,
                error_code=str(exc.code),
                message=exc.message,
            )
            # One error row per file, not one per phase.
            self.ledger.record_outcomes(info.batch_id, phase, [outcome], log_errors=i == 0)
            self.progress.advance(phase, 1)
        log.warning("skipped %s: %s %s", row["rel_path"], exc.code, exc.message)

    def _run_batch_phase(self, info: BatchInfo, phase: BatchPhase) -> None:
        name = str(phase.name)
        count = self.progress.counts[name]
        if count.status in (PhaseState.SKIPPED, PhaseState.COMPLETED):
            return
        self.progress.phase_started(name, count.total)
        self.ledger.set_batch_phase(
            info.batch_id, name, PhaseState.RUNNING, step=0, total_steps=count.total
        )
        self.poke()
        t0 = time.monotonic()

        def report(n: int) -> None:
            self.progress.advance(name, n)
            self.ledger.set_batch_phase(info.batch_id, name, PhaseState.RUNNING, step=count.step)

        def describe(text: str) -> None:
            self.progress.set_state(DaemonStatus.TRAINING, f"Clustering '{info.name}': {text}")

        phase.run(info, report, describe)
        self.progress.phase_finished(name, PhaseState.COMPLETED)
        self.ledger.set_batch_phase(
            info.batch_id,
            name,
            PhaseState.COMPLETED,
            step=count.step,
            add_seconds=time.monotonic() - t0,
        )
        self.poke()
