"""The RQ backend under faults, with every part real: the daemon and two `imgtrain worker`s
as subprocesses, Debian's redis-server (with a password) and a `chroma run` server (given a
token), on 127.0.0.1.

Three folders are dropped. During the first a worker is frozen mid-job and killed; during
the second the daemon is killed while its chunks are queued and restarted; during the
third Redis is stopped (the status must say REDIS_UNAVAILABLE with its URL) and started
again, empty. At the end every image is in the Chroma server exactly once, the ledger
agrees image by image and face by face, every batch completed, the status file was valid
at every read, and neither secret appears in any file or output.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.status.model import Status
from tests.conftest import REPO, make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import StatusReader, wait_for
from tests.servers import ChromaServer, RedisServer, WorkerProc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PASSWORD = "s3cret-redis-pw"
TOKEN = "s3cret-chroma-token"
FOLDERS = {
    "first": (1000, ["obama1.jpg", "two_people.jpg"]),
    "second": (2000, ["kit_with_rose.jpg", "obama3.jpg", "johnsnow_test1.jpg"]),
    "third": (3000, ["obama_and_biden.jpg", "alex_lacamoire1.jpg", "obama_partial_face.jpg"]),
}
GENERATED = 6  # generated photos per folder, besides the real ones


def stage(root: Path, name: str, shared_photos: Path) -> Path:
    seed, real = FOLDERS[name]
    folder = root / "staging" / name
    for i in range(GENERATED):
        make_jpeg(folder / f"gen{i}.jpg", size=(1200, 900), seed=seed + i)
    for photo in real:
        shutil.copy(shared_photos / "mixed" / photo, folder / photo)
    return folder


def drop(daemon: Daemon, folder: Path) -> None:
    folder.rename(daemon.inbox / folder.name)


def freeze_mid_job(
    workers: list[WorkerProc], client: Any, job_status: Callable[[str], str]
) -> tuple[WorkerProc, str]:
    """SIGSTOP a worker that holds a started job; confirm it froze mid-job, else let it go."""

    def attempt() -> tuple[WorkerProc, str] | None:
        for w in workers:
            job = w.busy_job(client)
            if not job:
                continue
            w.signal(signal.SIGSTOP)
            if w.busy_job(client) == job and job_status(job) == "started":
                return w, job
            w.signal(signal.SIGCONT)  # it finished in between: try the next job
        return None

    return wait_for(attempt, 120, "a worker in the middle of a job", interval=0.01)


def batch_jobs(client: Any, batch_id: int) -> int:
    return int(client.scard(f"imgtrain:imgtrain:b{batch_id}:jobs"))


def running_batch(daemon: Daemon, name: str) -> int | None:
    ledger = daemon.ledger()
    try:
        rows = ledger.query(
            "SELECT batch_id FROM batches WHERE name=? AND state='running'", (name,)
        )
        return rows[0]["batch_id"] if rows else None
    finally:
        ledger.close()


def test_two_workers_keep_every_image_once_through_kills_and_restarts(
    daemon_factory: Callable[..., Daemon],
    tmp_path: Path,
    shared_photos: Path,
) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    redis = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    chroma = ChromaServer(tmp_path / "chroma").start()
    workers: list[WorkerProc] = []
    reader: StatusReader | None = None
    try:
        d = daemon_factory(
            store={"url": chroma.url, "token": TOKEN},
            workers={
                "backend": "rq",
                "redis_url": redis.url,
                "chunk_size": 2,
                "job_timeout": 30,
                "heartbeat_seconds": 1,
            },
        )
        cfg = yaml.safe_load(d.config_path.read_text())
        client = redis.client()
        d.start()
        workers = [WorkerProc(d.root, cfg, name).start() for name in ("w1", "w2")]
        reader = StatusReader(d.status_path).start()
        for w in workers:
            wait_for(lambda w=w: w.registered(client), 240, f"worker {w.name} to register")
        d.wait_status(lambda s: s["status"] == "idle", 120, "the daemon idle")
        folders = {name: stage(tmp_path, name, shared_photos) for name in FOLDERS}

        def job_status(jid: str) -> str:
            job = Job.fetch_many([jid], connection=client, serializer=JSONSerializer)[0]
            return "gone" if job is None else str(job.get_status().value)

        # 1. A worker dies in the middle of a job: the other one does the job again.
        drop(d, folders["first"])
        frozen, job = freeze_mid_job(workers, client, job_status)
        frozen.kill()
        alive = next(w for w in workers if w is not frozen)

        def shown(state: str) -> Callable[[dict[str, Any]], bool]:
            def check(s: dict[str, Any]) -> bool:
                listed = {
                    w["name"]: w["state"] for w in (s.get("workers") or {}).get("workers", [])
                }
                return listed.get(frozen.name) == state

            return check

        dead_at = d.wait_status(shown("dead"), 60, f"killed worker {frozen.name} shown dead")
        d.wait_idle_with(1, timeout=180)
        assert "stopped sending heartbeats" in d.log() and job in d.log()

        # 2. The daemon dies while its chunks are queued; the restarted one finds them.
        drop(d, folders["second"])
        second = wait_for(lambda: running_batch(d, "second"), 60, "the second batch running")
        wait_for(lambda: batch_jobs(client, second) > 0, 60, "its chunk jobs in Redis")
        d.kill()
        d.start()
        d.wait_idle_with(2, timeout=180)
        assert "found" in d.log().split("==== start 2")[1]  # its jobs, in Redis

        # 3. Redis goes away (the status says so, with the URL) and comes back empty.
        drop(d, folders["third"])
        third = wait_for(lambda: running_batch(d, "third"), 60, "the third batch running")
        wait_for(lambda: batch_jobs(client, third) > 0, 60, "its chunk jobs in Redis")
        redis.stop()
        down = d.wait_status(
            lambda s: (s.get("error") or {}).get("code") == "REDIS_UNAVAILABLE",
            60,
            "REDIS_UNAVAILABLE in the status",
        )
        assert f"redis://***@127.0.0.1:{redis.port}/0" in down["error"]["message"]
        assert down["workers"]["reachable"] is False or down["workers"]["redis"]
        redis.start()
        final = d.wait_idle_with(3, timeout=240)
        alive.assert_alive()

        # Every image is in the Chroma server exactly once, and the ledger agrees.
        assert final["queue"]["completed"] == 3 and final["queue"]["failed"] == 0
        ledger = d.ledger()
        try:
            images = ledger.query("SELECT image_id, sha256 FROM images")
            states = ledger.query(
                "SELECT phase, state, COUNT(*) n FROM image_phases GROUP BY phase, state"
            )
            face_rows = [r["face_id"] for r in ledger.query("SELECT face_id FROM faces")]
        finally:
            ledger.close()
        total = sum(GENERATED + len(real) for _, real in FOLDERS.values())
        assert len(images) == total
        assert {(r["phase"], r["state"]) for r in states} <= {
            ("embedding", "done"),
            ("faces", "done"),
            ("faces", "no_faces"),
        }
        stored = chroma.ids("images")
        assert len(stored) == total and sorted(stored) == sorted(r["sha256"] for r in images)
        faces = chroma.ids("faces")
        assert len(faces) >= 8  # the real photos' faces
        assert sorted(faces) == sorted(face_rows) and len(set(face_rows)) == len(face_rows)

        # The status file was valid at every read; the dead worker was never shown busy after.
        reader.stop()
        assert reader.errors == [] and reader.reads > 100
        for snapshot in reader.snapshots:
            Status.model_validate(snapshot)
        after = reader.snapshots[reader.snapshots.index(dead_at) :]
        assert not any(shown("busy")(s) for s in after)

        # Neither secret is ever written: status file, logs, --json output.
        outputs = [
            subprocess.run(
                [*alive.command, *args], cwd=REPO, capture_output=True, text=True, timeout=60
            )
            for args in (["status", "--json"], ["status"], ["workers", "--json"], ["workers"])
        ]
        assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
        assert json.loads(outputs[2].stdout)["redis"].startswith("redis://***@")
        texts = [
            d.log(),
            *(w.log() for w in workers),
            *(o.stdout + o.stderr for o in outputs),
            *(json.dumps(s) for s in reader.snapshots),
            d.status_path.read_text(),
        ]
        for secret in (PASSWORD, TOKEN):
            assert not [t for t in texts if secret in t], f"{secret} leaked"
    finally:
        if reader is not None:
            reader.stop()
        for w in workers:
            w.stop()
        redis.stop()
        chroma.stop()
