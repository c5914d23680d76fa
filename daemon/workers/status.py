"""The workers as Redis knows them: for the status file's `workers` block and `imgtrain workers`.

RQ keeps one hash per worker (name, host, state, last heartbeat); `imgtrain
worker` adds its current job, its images per second and its heartbeat
interval. A worker is dead once it missed DEAD_BEATS heartbeats (plus slack):
then it is shown as dead, not as busy, whatever its hash last said. Judging
compares the worker's clock with ours, so machines running workers keep their
clocks in sync (NTP), as any cluster does.

The daemon reads all this in a thread of its own (`WorkersMonitor`): a Redis
that stops answering must never hold up a status write.
"""

from __future__ import annotations

import logging
import statistics
import threading
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from daemon.redact import redact_url
from daemon.status.model import WorkerInfo, WorkersInfo
from daemon.workers.connection import (
    F_BEAT,
    F_IMAGES,
    F_JOB,
    F_RATE,
    connect,
    redis_errors,
)

if TYPE_CHECKING:
    from redis import Redis

    from daemon.config import WorkersConfig

log = logging.getLogger(__name__)

DEAD_BEATS = 3  # heartbeats a worker may miss before it is dead
DEAD_SLACK = 5.0  # seconds on top: a busy machine, a slow network
DEFAULT_BEAT = 10.0  # seconds: a worker that does not say its interval (a plain rq worker)
MONITOR_SECONDS = 2.0
RECENT = 50  # jobs the overhead medians are taken over


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _parse_time(value: Any) -> datetime | None:
    from rq.utils import utcparse

    text = _text(value)
    if not text:
        return None
    try:
        return utcparse(text)
    except ValueError:
        return None


def is_alive(last: datetime | None, beat: float | None, now: datetime) -> bool:
    if last is None:
        return False
    limit = DEAD_BEATS * (beat or DEFAULT_BEAT) + DEAD_SLACK
    return (now - last).total_seconds() <= limit


def heartbeats(conn: Redis, names: list[str]) -> dict[str, bool]:
    """{worker name: alive} for workers named by started jobs (a missing hash is dead)."""
    names = sorted(set(names))
    if not names:
        return {}
    with conn.pipeline(transaction=False) as p:
        for name in names:
            p.hmget(f"rq:worker:{name}", ["last_heartbeat", F_BEAT, "death"])
        rows = p.execute()
    now = datetime.now(UTC)
    out = {}
    for name, (last, beat, death) in zip(names, rows, strict=True):
        out[name] = death is None and is_alive(_parse_time(last), _float(beat), now)
    return out


def _float(value: Any) -> float | None:
    try:
        return float(_text(value) or "")
    except ValueError:
        return None


def read_workers(cfg: WorkersConfig, conn: Redis) -> WorkersInfo:
    """One look at the queue and its workers. Raises redis errors when Redis does not answer."""
    from rq.worker_registration import WORKERS_BY_QUEUE_KEY

    keys = sorted(_text(k) or "" for k in conn.smembers(WORKERS_BY_QUEUE_KEY % cfg.queue))
    with conn.pipeline(transaction=False) as p:
        for key in keys:
            p.hgetall(key)
        p.llen(f"rq:queue:{cfg.queue}")
        *hashes, depth = p.execute()
    now = datetime.now(UTC)
    workers = []
    for key, raw in zip(keys, hashes, strict=True):
        if not raw:  # expired since the set was read: gone for good
            continue
        h = {_text(k): v for k, v in raw.items()}
        last = _parse_time(h.get("last_heartbeat"))
        job = _text(h.get(F_JOB)) or None
        alive = h.get("death") is None and is_alive(last, _float(h.get(F_BEAT)), now)
        state = _text(h.get("state")) or "unknown"
        if not alive:
            state = "dead"
        elif job:
            state = "busy"
        workers.append(
            WorkerInfo(
                name=key.rsplit(":", 1)[-1],
                host=_text(h.get("hostname")),
                state=state,
                current_job=job if alive else None,
                images_per_second=_float(h.get(F_RATE)),
                images=int(_float(h.get(F_IMAGES)) or 0),
                last_heartbeat=last,
            )
        )
    return WorkersInfo(
        redis=redact_url(cfg.redis_url),
        queue=cfg.queue,
        reachable=True,
        queue_depth=int(depth),
        workers=workers,
        checked_at=now,
    )


class Overheads:
    """What the queue costs per job, as recent medians: queued until started (which includes
    waiting behind the jobs queued ahead), the dispatch alone (from the moment a worker was
    free, or the job queued if later, until it started), and result until in the ledger.
    Worker times are the worker's clock: across machines these are as exact as NTP."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queue_wait: deque[float] = deque(maxlen=RECENT)
        self.dispatch: deque[float] = deque(maxlen=RECENT)
        self.result_delay: deque[float] = deque(maxlen=RECENT)
        self._free_since: dict[str, datetime] = {}

    def observe(
        self,
        enqueued: datetime | None,
        started: datetime | None,
        ended: datetime | None,
        worker: str | None = None,
    ) -> None:
        now = datetime.now(UTC)
        with self._lock:
            if enqueued and started:
                self.queue_wait.append(max((started - enqueued).total_seconds(), 0.0))
                free = self._free_since.get(worker or "")
                # Only the job right after the worker's previous one tells the dispatch time.
                if free is not None and free <= started:
                    ready = max(enqueued, free)
                    self.dispatch.append(max((started - ready).total_seconds(), 0.0))
            if ended:
                self.result_delay.append(max((now - ended).total_seconds(), 0.0))
                if worker:
                    self._free_since[worker] = ended

    def medians(self) -> dict[str, float | None]:
        with self._lock:
            named = {
                "queue_wait_seconds": self.queue_wait,
                "dispatch_seconds": self.dispatch,
                "result_delay_seconds": self.result_delay,
            }
            return {k: round(statistics.median(v), 4) if v else None for k, v in named.items()}


class WorkersMonitor:
    """Reads the workers every MONITOR_SECONDS in a thread; `info()` is the latest look."""

    def __init__(self, cfg: WorkersConfig, overheads: Overheads | None = None) -> None:
        self.cfg = cfg
        self.overheads = overheads or Overheads()
        self._conn = connect(cfg)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._info = WorkersInfo(
            redis=redact_url(cfg.redis_url), queue=cfg.queue, reachable=False, error="not read yet"
        )
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="workers-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def info(self) -> WorkersInfo:
        with self._lock:
            return self._info.model_copy(update=self.overheads.medians())

    def refresh(self) -> None:
        try:
            info = read_workers(self.cfg, self._conn)
        except redis_errors() as exc:
            info = WorkersInfo(
                redis=redact_url(self.cfg.redis_url),
                queue=self.cfg.queue,
                reachable=False,
                error=f"REDIS_UNAVAILABLE: {exc}",
                checked_at=datetime.now(UTC),
            )
        with self._lock:
            self._info = info

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception:  # the monitor must outlive a bad read
                log.exception("could not read the workers")
            self._stop.wait(MONITOR_SECONDS)
