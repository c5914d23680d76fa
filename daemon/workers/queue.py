"""The daemon's side of the RQ backend: a batch's image phases out as chunk jobs, outcomes in.

The ledger stays the truth. Each chunk job (`<queue>-b<batch>-c<chunk>-a<attempt>`)
carries images the ledger lists as pending; its result is recorded through the
pipeline exactly as a local chunk is (the same ledger calls, in photo order),
and only for images and phases still pending, so a result that arrives twice
(a retry after a worker died, a daemon restarted mid-batch) changes nothing
the second time, and Chroma's upserts by content id are idempotent anyway.

A chunk is queued again (attempt + 1) when its job failed, when its worker
stopped sending heartbeats, when it ran `job_timeout` (plus slack) without a
result, or when its job vanished (Redis restarted without its data); after
MAX_FAILURES failures the batch fails with the last reason. While Redis does
not answer, the status says REDIS_UNAVAILABLE with the URL and the daemon
retries every few seconds: jobs and results wait in Redis (or are queued
again), nothing is lost. Every job id of a batch is kept in a Redis set, so
a restarted daemon finds its chunks' jobs and results there and queues only
what is missing. At most a few chunks per worker are queued at once, which
bounds Redis's memory (with `send_bytes`) and lets pause take effect soon.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon.errors import DiskFull, Interrupted, WorkerFailed
from daemon.phases.ahead import chunked
from daemon.status.model import ErrorInfo
from daemon.vocab import DaemonStatus, PendingImage
from daemon.workers.chunks import Chunk, as_text, failure_text, job_items, job_payload
from daemon.workers.connection import (
    JOB_FUNC,
    RESULT_TTL,
    batch_key,
    connect,
    job_id,
    parse_job_id,
    queue,
    redis_errors,
    unavailable,
    warn_if_open,
)
from daemon.workers.results import BadResult, Recorder
from daemon.workers.status import Overheads, heartbeats

if TYPE_CHECKING:
    from redis import Redis
    from rq.job import Job

    from daemon.config import Config
    from daemon.phases.base import BatchInfo
    from daemon.phases.pipeline import Pipeline

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
MAX_FAILURES = 3  # failed attempts of one chunk before its batch fails
REDIS_RETRY = 2.0  # seconds between tries while Redis does not answer
TIMEOUT_SLACK = 30.0  # seconds past job_timeout before the daemon gives up on a started job
PER_WORKER = 2  # chunks queued per registered worker (at least MIN_WINDOW)
MIN_WINDOW = 2


class RemoteRunner:
    """The pipeline's chunk runner for workers.backend rq (see `Pipeline.run`)."""

    def __init__(
        self,
        config: Config,
        *,
        on_wait: Callable[[], None] = lambda: None,
        overheads: Overheads | None = None,
    ) -> None:
        self.config = config
        self.cfg = config.workers
        self.on_wait = on_wait  # called while waiting: the systemd watchdog
        self.overheads = overheads or Overheads()
        self.redis: Redis | None = None

    def setup(self) -> None:
        # Connecting is lazy: a Redis that is down is the batch's REDIS_UNAVAILABLE, retried.
        if self.redis is None:
            self.redis = connect(self.cfg)
            warn_if_open(self.cfg, "daemon")

    def run(self, pipeline: Pipeline, info: BatchInfo, pending: list[PendingImage]) -> None:
        self.setup()
        assert self.redis is not None
        _BatchRun(self, pipeline, info, pending).run()


class _BatchRun:
    def __init__(
        self, runner: RemoteRunner, pipeline: Pipeline, info: BatchInfo, pending: list[PendingImage]
    ) -> None:
        assert runner.redis is not None
        self.runner, self.cfg, self.pipeline, self.info = runner, runner.cfg, pipeline, info
        self.redis: Redis = runner.redis
        self.queue = queue(self.cfg, self.redis)
        self.recorder = Recorder(pipeline, info, pending)
        self.pending = self.recorder.pending  # image id -> its phases still pending; shrinks
        self.order = [p.image_id for p in pending]
        self.todo: deque[Chunk] = deque()
        self.inflight: dict[int, Chunk] = {}
        self.next_index = 0
        self.recovered = False
        self.key = batch_key(self.cfg.queue, info.batch_id)
        self.down_since: float | None = None
        self.before_outage: tuple[DaemonStatus, str] | None = None
        self.window = MIN_WINDOW
        self.jobs = self.retries = 0

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        try:
            while True:
                try:
                    if not self.recovered:
                        self._recover()
                        self.recovered = True
                    self._fill()
                    if self.inflight:
                        self._poll()
                    self._back()
                except redis_errors() as exc:
                    self._down(exc)
                    continue
                if not self.inflight and not self.todo:
                    break
                self._wait(POLL_SECONDS)
                self.pipeline.checkpoint(self.info)  # shutdown, pause, cancel: before queueing more
        except (Interrupted, DiskFull):
            raise  # the batch resumes later: its jobs and results stay in Redis for it
        except BaseException:
            self._forget()  # cancelled or failed: nobody will want these jobs
            raise
        if self.pending:
            raise RuntimeError(f"{len(self.pending)} images were never handed to a worker")
        self._forget()
        o = self.runner.overheads.medians()
        log.info(
            "batch %d: %d chunk jobs (%d retried); recent medians: queued %s s, dispatch %s s,"
            " result to ledger %s s",
            self.info.batch_id,
            self.jobs,
            self.retries,
            o["queue_wait_seconds"],
            o["dispatch_seconds"],
            o["result_delay_seconds"],
        )

    def _wait(self, seconds: float) -> None:
        self.runner.on_wait()
        self.pipeline.control.stop.wait(seconds)

    # -- Redis going away and coming back ---------------------------------------------
    def _down(self, exc: BaseException) -> None:
        progress = self.pipeline.progress
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.before_outage = (progress.status, progress.message)
            err = unavailable(self.cfg, exc)
            log.error("%s; retrying every %.0f s, nothing is lost", err.message, REDIS_RETRY)
            progress.note_error(str(err.code), err.message)
            progress.set_state(
                DaemonStatus.ERROR,
                f"{err.code}: {err.message}; retrying, nothing is lost",
                ErrorInfo(code=str(err.code), message=err.message, hint=err.hint),
            )
            self.pipeline.poke()
        self.pipeline.checkpoint(self.info)  # a shutdown is not held up by the outage
        self._wait(REDIS_RETRY)

    def _back(self) -> None:
        if self.down_since is None:
            return
        log.info(
            "Redis answers again after %.0f s; carrying on",
            time.monotonic() - self.down_since,
        )
        self.down_since = None
        if self.before_outage is not None:
            self.pipeline.progress.set_state(*self.before_outage)
        self.pipeline.poke()

    # -- finding what a previous daemon left in Redis ------------------------------------
    def _recover(self) -> None:
        from rq.job import Job, JobStatus
        from rq.serializers import JSONSerializer

        found = []
        for raw in self.redis.smembers(self.key):
            jid = as_text(raw)
            parsed = parse_job_id(self.cfg.queue, jid)
            if parsed is not None and parsed[0] == self.info.batch_id:
                found.append((parsed[1], parsed[2], jid))
        found.sort()
        jobs = Job.fetch_many(
            [jid for _, _, jid in found], connection=self.redis, serializer=JSONSerializer
        )
        attempts: dict[int, int] = {}
        applied = adopted = 0
        for (index, attempt, _jid), job in zip(found, jobs, strict=True):
            attempts[index] = max(attempts.get(index, 0), attempt)
            self.next_index = max(self.next_index, index + 1)
            if job is None:
                continue
            status = job.get_status(refresh=False)
            if status == JobStatus.FINISHED:
                self._finished(job, None)
                applied += 1
            elif status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED):
                ids = [item["image_id"] for item in job.args[0]["images"]]
                images = [self.pending[i] for i in ids if i in self.pending]
                if images:
                    self.inflight[index] = Chunk(index, images, attempt, job_id=job.id)
                    adopted += 1
        for index, chunk in self.inflight.items():
            chunk.attempt = attempts[index]  # a new attempt gets a new id
        covered = {img.image_id for c in self.inflight.values() for img in c.images}
        rest = [self.pending[i] for i in self.order if i in self.pending and i not in covered]
        for part in chunked(rest, self.cfg.chunk_size):
            self.todo.append(Chunk(self.next_index, list(part)))
            self.next_index += 1
        if found:
            log.info(
                "batch %d: found %d of its jobs in Redis (%d results recorded, %d still queued"
                " or running); %d chunks to queue",
                self.info.batch_id,
                len(found),
                applied,
                adopted,
                len(self.todo),
            )

    # -- queueing ----------------------------------------------------------------
    def _fill(self) -> None:
        from rq.worker_registration import WORKERS_BY_QUEUE_KEY

        if self.todo:
            workers = int(self.redis.scard(WORKERS_BY_QUEUE_KEY % self.cfg.queue))
            self.window = max(MIN_WINDOW, PER_WORKER * workers)
        while self.todo and len(self.inflight) < self.window:
            self._enqueue(self.todo.popleft())

    def _enqueue(self, chunk: Chunk) -> None:
        pending = self.pending
        chunk.images = [pending[i.image_id] for i in chunk.images if i.image_id in pending]
        items, unreadable = job_items(chunk.images, self.info.path, self.cfg.send_bytes)
        for img, error in unreadable:
            self.recorder.failed(img, error)
        chunk.images = [self.pending[i["image_id"]] for i in items]
        if not items:
            return
        chunk.attempt += 1
        chunk.job_id = job_id(self.cfg.queue, self.info.batch_id, chunk.index, chunk.attempt)
        chunk.started_seen = None
        payload = job_payload(self.info, chunk, items)
        try:
            with self.redis.pipeline() as p:
                self.queue.enqueue_call(
                    JOB_FUNC,
                    args=(payload,),
                    timeout=self.cfg.job_timeout,
                    result_ttl=RESULT_TTL,
                    failure_ttl=RESULT_TTL,
                    job_id=chunk.job_id,
                    # Not the payload: RQ logs the description, and bytes have no place there.
                    description=f"imgtrain chunk {chunk.job_id} ({len(items)} images)",
                    at_front=chunk.attempt > 1,  # a retry goes first: its batch waits on it
                    pipeline=p,
                )
                p.sadd(self.key, chunk.job_id)
                p.expire(self.key, RESULT_TTL)
                p.execute()
        except BaseException:
            chunk.attempt -= 1
            self.todo.appendleft(chunk)
            raise
        self.inflight[chunk.index] = chunk
        self.jobs += 1

    def _retry(self, chunk: Chunk, reason: str, *, failed: bool) -> None:
        self.inflight.pop(chunk.index, None)
        if not any(i.image_id in self.pending for i in chunk.images):
            return
        self.retries += 1
        if failed:
            chunk.failures += 1
            if chunk.failures >= MAX_FAILURES:
                raise WorkerFailed(
                    f"chunk {chunk.index} of batch {self.info.batch_id} failed"
                    f" {chunk.failures} times; the last time: {reason}"
                )
        log.warning(
            "batch %d chunk %d (%s): %s; queued again",
            self.info.batch_id,
            chunk.index,
            chunk.job_id,
            reason,
        )
        self._enqueue(chunk)

    # -- watching the jobs ---------------------------------------------------------
    def _poll(self) -> None:
        from rq.job import Job, JobStatus
        from rq.serializers import JSONSerializer

        chunks = list(self.inflight.values())
        jobs = Job.fetch_many(
            [c.job_id for c in chunks], connection=self.redis, serializer=JSONSerializer
        )
        running = [
            j.worker_name
            for j in jobs
            if j is not None and j.get_status(refresh=False) == JobStatus.STARTED and j.worker_name
        ]
        alive = heartbeats(self.redis, running)
        now = time.monotonic()
        for chunk, job in zip(chunks, jobs, strict=True):
            if job is None:
                self._retry(chunk, "its job is gone from Redis (restarted?)", failed=False)
                continue
            status = job.get_status(refresh=False)
            if status == JobStatus.FINISHED:
                self._finished(job, chunk)
                self.pipeline.checkpoint(self.info)
            elif status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
                self._retry(chunk, failure_text(job), failed=True)
            elif status == JobStatus.STARTED:
                if chunk.started_seen is None:
                    chunk.started_seen = now
                if job.worker_name and not alive.get(job.worker_name, False):
                    reason = f"worker {job.worker_name} stopped sending heartbeats"
                    self._retry(chunk, reason, failed=True)
                elif now - chunk.started_seen > self.cfg.job_timeout + TIMEOUT_SLACK:
                    reason = f"no result {self.cfg.job_timeout} s after a worker started it"
                    self._retry(chunk, reason, failed=True)

    def _finished(self, job: Job, chunk: Chunk | None) -> None:
        result = job.return_value()
        if chunk is not None:
            self.inflight.pop(chunk.index, None)
        try:
            self.recorder.apply(result)
        except BadResult as exc:
            if chunk is not None:
                self._retry(chunk, f"its result could not be read: {exc}", failed=True)
            return
        self.runner.overheads.observe(
            job.enqueued_at, job.started_at, job.ended_at, job.worker_name
        )
        with self.redis.pipeline() as p:
            job.delete(pipeline=p)
            p.srem(self.key, job.id)
            p.execute()
        if chunk is not None and any(i.image_id in self.pending for i in chunk.images):
            self._retry(chunk, "its result left images out", failed=True)

    def _forget(self) -> None:
        """Delete the batch's jobs and their results from Redis (best effort)."""
        from rq.job import Job
        from rq.serializers import JSONSerializer

        try:
            ids = [as_text(r) for r in self.redis.smembers(self.key)]
            jobs = Job.fetch_many(ids, connection=self.redis, serializer=JSONSerializer)
            with self.redis.pipeline() as p:
                for job in jobs:
                    if job is not None:
                        job.delete(pipeline=p)
                p.delete(self.key)
                p.execute()
        except redis_errors() as exc:
            log.warning("could not delete batch %d's jobs from Redis: %s", self.info.batch_id, exc)
