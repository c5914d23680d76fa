"""`imgtrain worker`: runs chunk jobs from the Redis queue with models loaded once.

RQ's default Worker forks a new work horse for every job, and a fresh process
would load CLIP and the face models again for each chunk. `ImgtrainWorker` is
a `SimpleWorker`: jobs run in this process, which loaded the models before it
took its first job and keeps them. (Preloading and then forking would share
the weights copy-on-write, but torch's thread pools and onnxruntime's sessions
do not survive a fork reliably; one process is simpler and as fast.) A job
that crashes the process loses only that process: the daemon queues its chunk
again when the heartbeats stop.

A thread sends a heartbeat every `workers.heartbeat_seconds`, idle or busy (RQ
only beats between jobs in a SimpleWorker), keeps the running job's place in
RQ's started registry fresh, and registers the worker again after Redis
restarted empty. When Redis goes away the worker waits and reconnects; a
SIGTERM finishes the current job first, a second one stops at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from rq.worker import SimpleWorker, WorkerStatus

from daemon.errors import ConfigError, StoreUnavailable
from daemon.redact import redact_url
from daemon.workers.connection import (
    F_BEAT,
    F_IMAGES,
    F_JOB,
    F_RATE,
    connect,
    queue,
    redis_errors,
    warn_if_open,
)

if TYPE_CHECKING:
    from rq.executions import Execution
    from rq.job import Job
    from rq.queue import Queue

    from daemon.config import Config
    from daemon.workers.jobs import WorkerRuntime

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 2.0
STORE_RETRY_SECONDS = 5.0
# RQ's registry upkeep (abandoned jobs, jobs stuck between queue and worker): every minute,
# not every ten, so a job lost by a worker killed at the wrong moment comes back soon.
MAINTENANCE_SECONDS = 60


class ImgtrainWorker(SimpleWorker):
    max_connection_wait_time = 5.0  # RQ's reconnect backoff tops out here, not at a minute

    def __init__(self, *args: Any, beat_seconds: float = 5.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.beat_seconds = beat_seconds
        self.stopping = False
        self.images_done = 0
        self._current: tuple[Job, Execution] | None = None
        self._lock = threading.Lock()
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- registration and heartbeats -------------------------------------------------
    def register_birth(self) -> None:
        super().register_birth()
        self.connection.hset(self.key, mapping={F_BEAT: self.beat_seconds, F_IMAGES: 0})
        self._beat_stop.clear()
        self._beat = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
        self._beat.start()

    def register_death(self) -> None:
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        super().register_death()

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.beat_seconds):
            try:
                with self._lock:
                    current = self._current
                if current is not None:
                    self.maintain_heartbeats(*current)
                else:
                    self.heartbeat()
                self._registered()
            except redis_errors() as exc:
                log.debug("heartbeat not sent: %s", exc)
            except Exception:  # the heartbeat must outlive one bad beat
                log.exception("heartbeat failed")

    def _registered(self) -> None:
        """After Redis restarted empty this worker is nobody: register it again."""
        from rq import worker_registration

        if self.connection.sismember(self.redis_workers_keys, self.key):
            return
        with self.connection.pipeline() as p:
            p.hset(self.key, mapping={**self.serialize(), F_BEAT: self.beat_seconds})
            p.hset(self.key, mapping={"state": self.get_state(), F_IMAGES: self.images_done})
            worker_registration.register(self, p)
            p.expire(self.key, self.worker_ttl + 60)
            p.execute()
        log.info("registered again with Redis (it had forgotten this worker)")

    # -- jobs --------------------------------------------------------------------
    def execute_job(self, job: Job, queue: Queue) -> None:
        """SimpleWorker's, in this process, with the current job and the rate in our hash."""
        self.connection.hset(self.key, F_JOB, job.id)
        execution = self.prepare_execution(job)
        with self._lock:
            self._current = (job, execution)
        t0 = time.monotonic()
        try:
            ok = self.perform_job(job, queue, execution)
        finally:
            with self._lock:
                self._current = None
        seconds = time.monotonic() - t0
        self.set_state(WorkerStatus.IDLE)
        fields: dict[str, Any] = {F_JOB: ""}
        if ok:
            images = len(job.args[0].get("images", [])) if job.args else 0
            self.images_done += images
            fields[F_RATE] = round(images / seconds, 3) if seconds > 0 else 0.0
            fields[F_IMAGES] = self.images_done
        self.connection.hset(self.key, mapping=fields)

    def subscribe(self) -> None:
        """No pubsub thread for RQ's remote commands: stopping it waits out redis-py's
        get_message timeout (up to a minute), and systemd's SIGTERM is how a worker stops."""

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stopping = True
        super().request_stop(signum, frame)


def load_runtime(config: Config, name: str) -> WorkerRuntime:
    """Connect to the Chroma server (waiting for it) and load the models, once."""
    from daemon.models import ModelRegistry
    from daemon.store.chroma import Store
    from daemon.workers.jobs import WorkerRuntime

    while True:
        try:
            store = Store(config)
            break
        except StoreUnavailable as exc:
            log.error("%s; trying again in %.0f s", exc.message, STORE_RETRY_SECONDS)
            time.sleep(STORE_RETRY_SECONDS)
    return WorkerRuntime(config, store, ModelRegistry(config), name)


def run_worker(config: Config, name: str | None = None, *, burst: bool = False) -> int:
    from rq.serializers import JSONSerializer

    from daemon.service.systemd import Notifier
    from daemon.workers import jobs

    cfg = config.workers
    if not config.store.url:
        raise ConfigError(
            "imgtrain worker needs store.url: a worker upserts into the Chroma server the"
            " daemon uses (the embedded store is one process's)",
            hint="Set store.url (and workers.redis_url) in the worker's config.yaml.",
        )
    name = name or f"{socket.gethostname()}.{os.getpid()}"
    notifier = Notifier()
    # Until RQ installs its own handlers, a SIGTERM during the model load just stops.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    warn_if_open(cfg, "worker")
    t0 = time.monotonic()
    runtime = load_runtime(config, name)
    jobs.install(runtime)
    log.info(
        "worker %s: %s loaded in %.1f s; queue %s on %s",
        name,
        ", ".join(runtime.phase_names),
        time.monotonic() - t0,
        cfg.queue,
        redis_url := redact_url(cfg.redis_url),
    )
    notifier.ready(f"worker {name} on {redis_url}")
    # RQ sets the socket timeout it needs for its blocking dequeue itself.
    conn = connect(cfg, socket_timeout=None)
    while True:
        worker = ImgtrainWorker(
            [queue(cfg, conn)],
            connection=conn,
            name=name,
            serializer=JSONSerializer,
            beat_seconds=cfg.heartbeat_seconds,
            maintenance_interval=MAINTENANCE_SECONDS,
        )
        try:
            worker.work(burst=burst, with_scheduler=False)
        except redis_errors() as exc:
            log.error("Redis at %s: %s; reconnecting", redis_url, exc)
        except ValueError as exc:  # "There exists an active worker named ...": our own, stale
            log.warning("%s; replacing the stale registration", exc)
            _forget_stale(conn, worker)
        if worker.stopping or burst:
            break
        try:
            time.sleep(RECONNECT_SECONDS)  # a pause before trying again, not a wait for a condition
        except Exception:  # RQ's handler raises StopRequested for a SIGTERM while idle
            break
    notifier.stopping(f"worker {name} stopped")
    log.info("worker %s stopped", name)
    return 0


def _forget_stale(conn: Any, worker: ImgtrainWorker) -> None:
    try:
        conn.delete(worker.key)
    except redis_errors():
        pass
