"""The daemon: main loop, signals, systemd integration.

Shutdown is warm then cold, as in rq: the first SIGTERM/SIGINT lets the
current chunk of images finish and be recorded, then exits; a second one
abandons the chunk at once (its work is redone on restart; every ledger write
is its own transaction, so nothing is half-recorded). Either way the status
file says `stopped` and the exit code is 0.

This is the only place that catches broad exceptions (with service/reindexing.py
for re-index work): a batch that raises something unexpected is marked failed
with the reason, and the daemon goes on with the next one.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from daemon.config import Config, load_config
from daemon.errors import DiskFull, ImgtrainError, Interrupted
from daemon.ingest.claim import recover_claims
from daemon.ingest.watch import Inbox
from daemon.ledger import workload
from daemon.ledger.ledger import Ledger
from daemon.models import ModelRegistry
from daemon.models.inventory import require_models
from daemon.phases.base import PhaseContext
from daemon.phases.control import Control
from daemon.phases.pipeline import Pipeline
from daemon.phases.registry import build_phases
from daemon.service.logs import batch_context, log_writer_stats, setup_logging
from daemon.service.outcome import outcome_of
from daemon.service.reindexing import Reindexing
from daemon.service.reload import apply_reload
from daemon.service.state import RunState
from daemon.service.systemd import Notifier
from daemon.status.model import ErrorInfo, Status
from daemon.status.outlook import PAUSED_MESSAGE
from daemon.status.progress import Progress
from daemon.status.writer import StatusWriter
from daemon.store.chroma import Store
from daemon.vocab import Batch, BatchState, DaemonStatus

log = logging.getLogger("imgtrain")

DISK_RETRY_SECONDS = 3.0  # how often a daemon stopped by a full disk tries again


class Service:
    def __init__(self, config: Config, config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = threading.Event()
        self._signals = 0
        self.notifier = Notifier()
        for d in (config.inbox_dir, config.data_dir, config.status_dir, config.batches_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(config.ledger_path)
        self.progress = Progress(
            data_dir=str(config.data_dir),
            # Seconds per step from versions before the cost model: its priors, once.
            costs=self.ledger.phase_costs(),
            memory=workload.cost_memory(self.ledger),
            max_errors=config.status.max_errors,
            chunk=config.clip.batch_size,
            stall_seconds=config.status.stall_seconds,
        )
        self.reindexing = Reindexing(
            self.ledger, self.progress, lambda: self.writer.poke(), self.stop, self.reload_requested
        )
        self.state = RunState(config, self.ledger, self.progress)
        self.writer = StatusWriter(
            config.status_path,
            self._build_status,
            busy=lambda: self.progress.busy() or self.reindexing.busy,
            busy_interval=config.status.busy_interval_seconds,
            heartbeat=config.status.heartbeat_seconds,
            schema_path=config.schema_path,
            after=self.state.write_metrics if config.status.metrics else None,
        )
        self.inbox = Inbox(
            config, self.ledger, on_queued=self._on_queued, on_notice=self._on_notice
        )
        # One registry for the daemon's life: a retry after a missing face pack does
        # not reload CLIP. Replaced only when a reload changes model settings.
        self.models = ModelRegistry(config)
        self.pipeline: Pipeline | None = None
        self.current: Batch | None = None
        self._models_error: ImgtrainError | None = None
        self._next_model_try = 0.0
        self._started = time.monotonic()
        self.random_weights = False
        self.stop_reason = "stopped"
        self.monitor = None
        if config.workers.backend == "rq":
            from daemon.workers.status import WorkersMonitor

            # Read in a thread of its own: a Redis that hangs never holds up a status write.
            self.monitor = WorkersMonitor(config.workers)

    # -- wiring ----------------------------------------------------------------
    def _build_pipeline(self) -> Pipeline:
        cfg = self.config
        ctx = PhaseContext(config=cfg, store=Store(cfg), ledger=self.ledger, models=self.models)
        image_phases, batch_phases = build_phases(cfg)
        control = Control(
            self.ledger, self.stop, self.progress, self.writer.poke, cfg.queue.control_poll_seconds
        )
        runner = None
        if self.monitor is not None:
            from daemon.workers.queue import RemoteRunner

            runner = RemoteRunner(
                cfg, on_wait=self.notifier.watchdog, overheads=self.monitor.overheads
            )
        parts = (ctx, image_phases, batch_phases, self.progress, control, self.writer.poke)
        return Pipeline(*parts, runner=runner, workload=self.state.workload)

    def _build_status(self) -> Status:
        status = self.state.build()
        if self.monitor is not None:
            status.workers = self.monitor.info()
        status.reindex = self.reindexing.tracker.view()
        self.notifier.status(status.message)
        return status

    def _on_queued(self, batch_id: int) -> None:
        # Runs on the inbox thread: a run starts when work arrives, or grows.
        log.info("queued batch %d", batch_id)
        self.state.queued(batch_id)
        self.writer.poke()
        self.wake.set()

    def _on_notice(self, code: str, message: str, file: str) -> None:
        log.warning("%s: %s (%s)", code, message, file)
        try:
            self.ledger.errors.add(file, code, message)
        except DiskFull:  # the status file may well be on another disk: say it there
            self.progress.note_error(code, message, file)
        self.writer.poke()

    # -- signals -----------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        if self._signals == 1:
            log.info("%s: finishing the current step, then stopping", name)
            self.stop_reason = f"stopped by {name}"
            self.stop.set()
            self.wake.set()
        else:
            log.warning("%s again: abandoning the current step now", name)
            raise Interrupted(name)

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload_requested.set()
        self.wake.set()

    def _reload(self) -> None:
        self.reload_requested.clear()
        try:
            new = load_config(self.config_path)
        except ImgtrainError as exc:
            log.error("reload refused, keeping the running settings: %s", exc)
            return
        old_inbox = self.config.inbox
        self.config, changed = apply_reload(self.config, new)
        if self.config.inbox != old_inbox:
            changed.append("inbox")
            self.inbox.reconfigure(self.config)
        logging.getLogger().setLevel(self.config.log_level)
        if "clip" in changed or "faces" in changed or "device" in changed:
            self.models = ModelRegistry(self.config)
        self.pipeline = None  # rebuilt (and models retried) before the next batch
        self._models_error = None
        self._next_model_try = 0.0
        log.info("reloaded settings (%s)", ", ".join(changed) or "no model or phase change")

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.stop_reason = "stopped"
        self.progress.set_state(DaemonStatus.IDLE, "starting: checking the inbox and the queue")
        if self.ledger.next_batch() is not None:
            self.ledger.open_run()  # work queued before this start: a run is under way
        self.state.refresh()
        self.state.after_batch(None)
        self.writer.flush()  # a crashed predecessor's status is corrected at once
        recover_claims(self.ledger, self.config)
        self.writer.start()
        if self.monitor is not None:
            self.monitor.start()
        self.inbox.start()
        self.notifier.ready(f"watching {self.config.inbox_dir}")
        log.info("watching %s (pid ready)", self.config.inbox_dir)
        try:
            while not self.stop.is_set():
                try:
                    self._tick()
                except DiskFull as exc:
                    self._disk_full(exc)
        except Interrupted:
            pass
        finally:
            self._shutdown()
        return 0

    def _disk_full(self, exc: DiskFull) -> None:
        """Nothing is failed for a full disk: say so, wait, and carry on where it stopped."""
        log.error("%s; retrying every %.0f s", exc, DISK_RETRY_SECONDS)
        self.progress.note_error(str(exc.code), exc.message)
        self.progress.set_state(
            DaemonStatus.ERROR,
            f"{exc.code}: {exc.message}; waiting for free space, nothing is lost",
            ErrorInfo(code=str(exc.code), message=exc.message, hint=exc.hint),
        )
        self.writer.poke()
        self._wait(DISK_RETRY_SECONDS)

    def _tick(self) -> None:
        self.notifier.watchdog()
        if self.reload_requested.is_set():
            self._reload()
        if self.pipeline is not None and self.reindexing.stale(self.pipeline):
            self.pipeline = None  # a re-index began or ended: new batches go elsewhere
        if not self._ensure_pipeline():
            self._wait(min(1.0, self.config.models.retry_seconds))
            return
        batch = self.ledger.next_batch()
        if batch is None:
            if not self.reindexing.work(self.pipeline):
                self._idle()
            return
        if self.ledger.is_paused():
            self.progress.set_state(DaemonStatus.PAUSED, PAUSED_MESSAGE)
            self.writer.poke()
            self._wait(self.config.queue.control_poll_seconds)
            return
        self._run_batch(batch)

    def _wait(self, seconds: float) -> None:
        self.notifier.watchdog()
        if self.notifier.watchdog_interval:  # never sleep through a watchdog deadline
            seconds = min(seconds, self.notifier.watchdog_interval / 2)
        self.wake.wait(timeout=seconds)
        self.wake.clear()

    def _idle(self) -> None:
        with self.progress.lock:
            if self.ledger.next_batch() is not None:
                return  # claimed just now: the next tick takes it
            changed = self.state.end_run()
        if changed:
            self.writer.poke()
        self._wait(min(self.config.status.heartbeat_seconds, 5.0))

    def _ensure_pipeline(self) -> bool:
        if self.pipeline is not None:
            return True
        retry = self.reindexing.retry_now(self._models_error)  # `imgtrain reindex` was run
        if time.monotonic() < self._next_model_try and not retry:
            return False
        self.progress.set_state(DaemonStatus.IDLE, "loading models")
        self.writer.poke()
        try:
            require_models(self.config, self.config_path)  # names every missing model at once
            pipeline = self._build_pipeline()
            pipeline.setup()
        except ImgtrainError as exc:
            self._next_model_try = time.monotonic() + self.config.models.retry_seconds
            if str(exc) != str(self._models_error):
                log.error("%s", exc)
            self._models_error = exc
            self.progress.set_state(
                DaemonStatus.ERROR,
                f"{exc.code}: {exc.message}; still watching and queuing the inbox",
                ErrorInfo(code=str(exc.code), message=exc.message, hint=exc.hint),
            )
            self.writer.poke()
            return False
        self._models_error = None
        self.pipeline = pipeline
        self.progress.set_accelerators(*self.models.accelerators())
        self._warn_random_weights(pipeline)
        self.progress.set_state(DaemonStatus.IDLE, "models loaded")
        return True

    def _warn_random_weights(self, pipeline: Pipeline) -> None:
        clip = getattr(pipeline.ctx.models, "loaded_clip", None)
        self.random_weights = bool(clip and clip.random_weights)
        if self.random_weights:
            log.warning("CLIP has RANDOM WEIGHTS (pretrained: none): search is meaningless")

    def _run_batch(self, batch: Batch) -> None:
        assert self.pipeline is not None
        with batch_context(batch.batch_id):
            warn = " [RANDOM CLIP WEIGHTS: search is meaningless]" if self.random_weights else ""
            with self.progress.lock:
                self.ledger.open_run()
                batch = self.ledger.start_batch(batch.batch_id)
                self.current = batch
                self.state.refresh()
                self.progress.set_state(DaemonStatus.TRAINING, f"Processing '{batch.name}'{warn}")
            log.info(
                "batch %d '%s' started (attempt %d)", batch.batch_id, batch.name, batch.attempts
            )
            t0 = time.monotonic()
            try:
                self.pipeline.run(batch)
                error: Exception | None = None
            except Interrupted:
                # The batch stays `running`: the next start resumes it.
                self.ledger.add_batch_seconds(batch.batch_id, time.monotonic() - t0)
                raise
            except DiskFull:
                # The batch stays `running` and resumes when there is room.
                with self.progress.lock:
                    self.current = None
                    self.progress.end_batch()
                raise
            except Exception as exc:  # the one broad catch: the daemon outlives a bad batch
                error = exc
                if not isinstance(exc, ImgtrainError):
                    log.exception("batch %d failed", batch.batch_id)
            outcome = outcome_of(error)
            if outcome.state is None:
                log.error("%s", error)
                self.ledger.add_batch_seconds(batch.batch_id, time.monotonic() - t0)
                self.pipeline = None
                with self.progress.lock:
                    self.current = None
                    self.progress.end_batch()
                return
            if outcome.state == BatchState.FAILED and isinstance(error, ImgtrainError):
                log.error("batch %d failed: %s", batch.batch_id, error)
            state = outcome.state
            # One transition under the state lock: the batch's outcome, the run's plan, and,
            # when nothing is queued, idle with the run ended; no write sees half of it.
            with self.progress.lock:
                self.ledger.finish_batch(
                    batch.batch_id,
                    state,
                    seconds=time.monotonic() - t0,
                    error_code=outcome.code,
                    error_message=outcome.message,
                )
                self.current = None
                self.progress.end_batch(learn=state == BatchState.COMPLETED)
                self.state.save_costs()
                self.state.after_batch(batch.batch_id)
                self.state.refresh()
                if self.ledger.next_batch() is None and not self.stop.is_set():
                    self.state.end_run()
            log.info(
                "batch %d '%s' %s in %.1fs",
                batch.batch_id,
                batch.name,
                state,
                time.monotonic() - t0,
            )
            self.writer.flush()

    def _shutdown(self) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.notifier.stopping(self.stop_reason)
        self.inbox.stop()
        message = self.stop_reason
        if self.current is not None:
            message += f"; batch {self.current.batch_id} '{self.current.name}' resumes on restart"
        with self.progress.lock:
            self.progress.end_batch()
            self.progress.set_state(DaemonStatus.STOPPED, message)
        if self.monitor is not None:
            self.monitor.stop()
        self.writer.stop()
        self.writer.flush()
        log_writer_stats(self.writer, time.monotonic() - self._started)
        log.info("%s", message)


def run_daemon(config_path: Path | None) -> int:
    config = load_config(config_path)
    setup_logging(config.log_level)
    return Service(config, config_path).run()
