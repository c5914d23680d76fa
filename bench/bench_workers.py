"""workers: the RQ backend against the local one, the real daemon timed from the outside.

Each round runs the same photos through three fresh daemons, one after the other:

* local: `workers.backend: local`, CLIP and the faces with two threads each (this
  machine's cores; the default here), the embedded store;
* rq x1: `workers.backend: rq` and one `imgtrain worker` with the default threads, on this
  machine, a redis-server and a `chroma run` server started for the round;
* rq x2: two `imgtrain worker`s with one thread each (clip.threads, faces.threads and
  decode.workers 1).

The clock starts when the folder is renamed into the inbox and stops when the status says
the batch completed, as in the e2e benchmark; each daemon (and its workers) first runs a
two-photo warm-up batch. The per-job overhead comes from the daemon's own measurements in
the status file's `workers` block: enqueue to start (including the wait behind jobs queued
ahead, two per worker), the dispatch alone (a worker free until it started the job) and
result to ledger.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench import assets
from bench.common import Context, Row
from bench.daemon_session import REPO, Daemon

SETTLE = 1.0
PHOTOS = 96  # of the generated set: a small size, about ten seconds a run here
TARGET = 0.9  # rq with one worker vs local: the queue must cost little


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Servers:
    """A redis-server and a `chroma run` on 127.0.0.1, for one run."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.redis_port, self.chroma_port = _free_port(), _free_port()
        redis = shutil.which("redis-server")
        chroma = shutil.which("chroma", path=str(Path(sys.executable).parent))
        if redis is None or chroma is None:
            raise RuntimeError("the workers benchmark needs redis-server and chromadb's chroma")
        with open(root / "servers.log", "ab") as log:
            self.procs = [
                subprocess.Popen(
                    [
                        redis,
                        *("--port", str(self.redis_port), "--bind", "127.0.0.1"),
                        *("--save", "", "--appendonly", "no", "--dir", str(root)),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                subprocess.Popen(
                    [
                        chroma,
                        "run",
                        "--path",
                        str(root / "chroma"),
                        *("--host", "127.0.0.1", "--port", str(self.chroma_port)),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
            ]
        self._wait()

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def chroma_url(self) -> str:
        return f"http://127.0.0.1:{self.chroma_port}"

    def _wait(self, timeout: float = 60) -> None:
        import redis

        client = redis.Redis(port=self.redis_port, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                client.ping()
                with urllib.request.urlopen(f"{self.chroma_url}/api/v2/heartbeat", timeout=1):
                    return
            except (OSError, redis.exceptions.RedisError):
                time.sleep(0.2)
        raise TimeoutError("redis-server or chroma run did not come up")

    def workers_registered(self, queue: str) -> int:
        import redis

        return int(redis.Redis(port=self.redis_port).scard(f"rq:workers:{queue}"))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _threads(n: int) -> dict[str, Any]:
    return {
        "clip": {"threads": n},
        "faces": {"threads": n},
        "decode": {"workers": n},
    }


def _config(root: Path, **over: Any) -> dict[str, Any]:
    cfg = assets.daemon_config(root, inbox={"settle_seconds": SETTLE})
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def _start_worker(root: Path, cfg: dict[str, Any], name: str) -> subprocess.Popen:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(path), "worker", "--name", name],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


def _run_local(ctx: Context, root: Path, photos: list[Path], warm: list[Path]) -> float:
    daemon = Daemon(root, _config(root, **_threads(2)))
    try:
        daemon.start()
        daemon.run_batch("warmup", warm)
        drop = daemon.run_batch("photos", photos)
    finally:
        daemon.stop()
    ctx.log(f"  local: {drop.rate:.2f} img/s ({drop.state})")
    return drop.rate


def _run_rq(
    ctx: Context, root: Path, photos: list[Path], warm: list[Path], workers: int, threads: int
) -> tuple[float, dict[str, Any]]:
    servers = Servers(root / "servers")
    procs: list[subprocess.Popen] = []
    daemon: Daemon | None = None
    try:
        rq = {
            "store": {"url": servers.chroma_url},
            "workers": {"backend": "rq", "redis_url": servers.redis_url},
        }
        cfg = _config(root, **rq)
        worker_cfg = _config(root, **rq, **({} if threads == 0 else _threads(threads)))
        procs = [_start_worker(root, worker_cfg, f"w{i}") for i in range(workers)]
        daemon = Daemon(root, cfg)
        daemon.start()
        deadline = time.monotonic() + 300
        while servers.workers_registered("imgtrain") < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start; see {root}/w*.log")
            time.sleep(0.2)
        daemon.run_batch("warmup", warm)
        drop = daemon.run_batch("photos", photos)
        block = (daemon.watcher.latest() or {}).get("workers") or {}
    finally:
        if daemon is not None:
            daemon.stop()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        servers.stop()
    ctx.log(
        f"  rq x{workers} ({threads or 'default'} threads): {drop.rate:.2f} img/s ({drop.state});"
        f" queued {block.get('queue_wait_seconds')} s, dispatch {block.get('dispatch_seconds')}"
        f" s, result to ledger {block.get('result_delay_seconds')} s"
    )
    return drop.rate, block


def run(ctx: Context) -> list[Row]:
    photos = ctx.photos[: (len(ctx.photos) if ctx.quick else PHOTOS)]
    warm = assets.SMALL.paths()[:2]
    rounds = ctx.reps(2, 1)
    local: list[float] = []
    one: list[float] = []
    two: list[float] = []
    blocks: list[dict[str, Any]] = []
    for r in range(rounds):
        ctx.log(f"workers round {r}: {len(photos)} photos")
        order = ["local", "one", "two"] if r % 2 == 0 else ["two", "one", "local"]
        for side in order:
            root = ctx.work / f"workers{r}-{side}"
            if side == "local":
                local.append(_run_local(ctx, root, photos, warm))
            elif side == "one":
                rate, block = _run_rq(ctx, root, photos, warm, workers=1, threads=0)
                one.append(rate)
                blocks.append(block)
            else:
                rate, block = _run_rq(ctx, root, photos, warm, workers=2, threads=1)
                two.append(rate)
                blocks.append(block)
    ratio_one = statistics.median(a / b for a, b in zip(one, local, strict=True))
    ratio_two = statistics.median(a / b for a, b in zip(two, local, strict=True))

    def med(key: str) -> float:
        values = [b[key] for b in blocks if b.get(key) is not None]
        return statistics.median(values) if values else float("nan")

    n = len(photos)
    ms = {
        k: med(k) * 1000 for k in ("dispatch_seconds", "queue_wait_seconds", "result_delay_seconds")
    }
    return [
        Row(
            "workers",
            f"daemon + 1 worker (rq) vs local backend, {n} photos",
            statistics.median(one),
            "img/s",
            statistics.median(local),
            ratio_one,
            f">= {TARGET}x local",
            ratio_one >= TARGET,
            "the same machine: daemon, worker, redis-server and chroma run share its 2 cores;"
            " local uses the embedded store, rq the Chroma server; drop -> completed;"
            f" {rounds} rounds",
            one + local,
        ),
        Row(
            "workers",
            f"2 single-threaded workers vs local with 2 threads, {n} photos",
            statistics.median(two),
            "img/s",
            statistics.median(local),
            ratio_two,
            note="each worker clip.threads, faces.threads and decode.workers 1",
            samples=two,
        ),
        Row(
            "workers",
            "per job: enqueue -> start on a free worker (dispatch)",
            ms["dispatch_seconds"],
            "ms",
            note=f"enqueue -> start {ms['queue_wait_seconds']:.0f} ms including the wait behind"
            " the job queued ahead (the daemon keeps two per worker); medians of the rq runs'"
            " recent jobs, chunk_size 64",
        ),
        Row(
            "workers",
            "per job: result -> recorded in the ledger",
            ms["result_delay_seconds"],
            "ms",
            note="worker's ended_at to the daemon's ledger commit (polls every 0.2 s)",
        ),
    ]
