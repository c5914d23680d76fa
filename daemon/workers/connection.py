"""What the daemon and the workers share: the Redis connection, the queue, the job ids.

Jobs travel as JSON (RQ's JSONSerializer), never as pickles: whoever can write to
Redis could otherwise make the daemon run code when it reads a result back.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from daemon.errors import RedisUnavailable
from daemon.redact import has_password, is_loopback, redact_url

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue

    from daemon.config import WorkersConfig

log = logging.getLogger(__name__)

JOB_FUNC = "daemon.workers.jobs.run_chunk"
PAYLOAD_VERSION = 1
SOCKET_TIMEOUT = 10.0  # seconds: a Redis that stops answering is noticed, not waited on forever
CONNECT_TIMEOUT = 5.0
# Results wait this long for a daemon that is down; jobs are deleted once recorded.
RESULT_TTL = 7 * 24 * 3600
# Hash fields imgtrain keeps in RQ's worker hash, beside RQ's own.
F_JOB, F_RATE = "imgtrain_job", "imgtrain_rate"
F_IMAGES, F_BEAT = "imgtrain_images", "imgtrain_beat"


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused Redis connection raises (redis-py's errors, and OSError)."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def connect(cfg: WorkersConfig, *, socket_timeout: float | None = SOCKET_TIMEOUT) -> Redis:
    """A client for workers.redis_url; connects on first use (so an outage is not an error here)."""
    import redis

    return redis.Redis.from_url(
        cfg.redis_url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
    )


def queue(cfg: WorkersConfig, conn: Redis) -> Queue:
    from rq import Queue
    from rq.serializers import JSONSerializer

    return Queue(cfg.queue, connection=conn, serializer=JSONSerializer)


def unavailable(cfg: WorkersConfig, exc: BaseException) -> RedisUnavailable:
    return RedisUnavailable(f"cannot reach Redis at {redact_url(cfg.redis_url)}: {exc}")


def warn_if_open(cfg: WorkersConfig, who: str) -> str | None:
    """The loud warning for a Redis off this machine without a password, or None."""
    if is_loopback(cfg.redis_url) or has_password(cfg.redis_url):
        return None
    message = (
        f"{who}: workers.redis_url {redact_url(cfg.redis_url)} is not on this machine and has no"
        " password: anyone who can reach it can queue jobs your workers will run. Set a"
        " password (requirepass; redis://:PASSWORD@host:6379/0) and prefer rediss:// (TLS)"
    )
    log.warning("%s", message)
    return message


# -- job ids: deterministic, so a restarted daemon finds its chunks again -----------------
def job_id(queue_name: str, batch_id: int, chunk: int, attempt: int) -> str:
    return f"{queue_name}-b{batch_id}-c{chunk}-a{attempt}"


def parse_job_id(queue_name: str, jid: str) -> tuple[int, int, int] | None:
    """(batch, chunk, attempt) of one of our job ids, or None."""
    m = re.fullmatch(re.escape(queue_name) + r"-b(\d+)-c(\d+)-a(\d+)", jid)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def batch_key(queue_name: str, batch_id: int) -> str:
    """The Redis set of every job id the daemon queued for a batch."""
    return f"imgtrain:{queue_name}:b{batch_id}:jobs"
