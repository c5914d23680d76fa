"""The service's side of `imgtrain reindex`: when the daemon works on it, and what it says.

Re-index work runs only when no batch is waiting or running and the queue is
not paused, a few chunks at a time (`daemon.phases.reindex`), and gives way
at the next chunk to a batch, a pause, a reload or a shutdown. The status
stays `idle` meanwhile (there is no current batch; the `reindex` object
carries the progress), and is written as often as while busy.

A pipeline built before a re-index was asked for is rebuilt, so new batches
go into both collections; when it ends, the pipeline is rebuilt again and the
settings re-read (a daemon started before the config named the new model
picks it up then).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from daemon.errors import DiskFull, ImgtrainError, Interrupted, ModelMismatch
from daemon.ledger.ledger import Ledger
from daemon.phases.pipeline import Pipeline
from daemon.phases.reindex import Reindexer
from daemon.status.progress import Progress
from daemon.status.reindex import ReindexTracker
from daemon.vocab import DaemonStatus, PhaseName, ReindexState

log = logging.getLogger(__name__)

_UNSEEN = -1


class Reindexing:
    def __init__(
        self,
        ledger: Ledger,
        progress: Progress,
        poke: Callable[[], None],
        stop: threading.Event,
        reload: threading.Event,
    ) -> None:
        self.ledger, self.progress, self.poke = ledger, progress, poke
        self.stop, self.reload = stop, reload
        self.tracker = ReindexTracker()
        self.tracker.show(ledger.reindexes.last())
        self._runner: tuple[Pipeline, Reindexer] | None = None
        self._job_seen = _UNSEEN

    @property
    def busy(self) -> bool:
        return self.tracker.working

    def stale(self, pipeline: Pipeline) -> bool:
        """Whether the pipeline's embedding phase writes for another re-index than the running
        one (it was built before this one was asked for, or that one has ended)."""
        phase = next((p for p in pipeline.image_phases if p.name == PhaseName.EMBEDDING), None)
        if phase is None:
            return False
        job = self.ledger.reindexes.open()
        return (job.reindex_id if job else None) != getattr(phase, "reindex_id", None)

    def retry_now(self, error: ImgtrainError | None) -> bool:
        """After MODEL_MISMATCH, a re-index asked for since is worth loading the models for."""
        if not isinstance(error, ModelMismatch):
            return False
        job = self.ledger.reindexes.open()
        jid = job.reindex_id if job else None
        if jid == self._job_seen:
            return False
        self._job_seen = jid
        return jid is not None

    def work(self, pipeline: Pipeline | None) -> bool:
        """Work on the running re-index, if there is one and nothing else is due; True if it did."""
        job = self.ledger.reindexes.open()
        shown = self.tracker.row
        if job is None and shown is not None and shown.state == ReindexState.RUNNING:
            self.tracker.show(self.ledger.reindexes.last())  # cancelled from the command line
        if job is None or pipeline is None or self.ledger.is_paused():
            return False
        if self._runner is None or self._runner[0] is not pipeline:
            self._runner = (pipeline, Reindexer(pipeline.ctx, self.tracker, self.poke))
        self.progress.set_state(
            DaemonStatus.IDLE,
            f"Idle: re-indexing the library with {job.model} between batches; search uses"
            f" {job.from_model or 'the old model'} until it is complete",
        )
        self.poke()

        def give_way() -> bool:
            open_job = self.ledger.reindexes.open()
            return (
                self.stop.is_set()
                or self.reload.is_set()
                or open_job is None
                or open_job.reindex_id != job.reindex_id
                or self.ledger.is_paused()
                or self.ledger.next_batch() is not None
            )

        try:
            state = self._runner[1].run(job, give_way)
        except (DiskFull, Interrupted):
            raise  # the loop waits for space / stops; the job resumes later
        except Exception as exc:  # like a failed batch: the daemon outlives a failed re-index
            if not isinstance(exc, ImgtrainError):
                log.exception("re-index %d failed", job.reindex_id)
            if isinstance(exc, ImgtrainError):
                code, message = str(exc.code), exc.message
            else:
                code, message = "INTERNAL", f"{type(exc).__name__}: {exc}"
            self.ledger.reindexes.finish(job.reindex_id, ReindexState.FAILED, message)
            self.ledger.errors.add(None, code, f"re-index to {job.model}: {message}")
            state = ReindexState.FAILED
        finally:
            self.poke()
        if state is None:
            row = self.ledger.reindexes.get(job.reindex_id)
            if row is not None and row.state != ReindexState.RUNNING:
                state = row.state  # cancelled from the command line
        if state is not None:
            self.tracker.show(self.ledger.reindexes.get(job.reindex_id))
            log.info("re-index %d to %s: %s", job.reindex_id, job.model, state)
            # The models in use changed: a reload rebuilds the pipeline and re-reads the
            # settings, which may name the new model only in the file (the daemon started
            # before it was edited).
            self.reload.set()
        return True
