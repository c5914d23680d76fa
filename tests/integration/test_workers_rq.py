"""The RQ backend with its real parts: the pipeline and ledger here, `imgtrain worker` as a
real subprocess, Debian's redis-server and a `chroma run` server, all on 127.0.0.1.

One Redis, one Chroma server and one worker serve the module (each test uses photos of
its own, so the shared Chroma server never sees one test's photos in another's).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.errors import Cancelled, WorkerFailed
from daemon.ledger.ledger import Ledger
from daemon.phases.base import PhaseContext
from daemon.phases.control import Control
from daemon.phases.pipeline import Pipeline
from daemon.phases.registry import build_phases
from daemon.status.progress import Progress
from daemon.store.chroma import Store
from daemon.vocab import PHASES, DaemonStatus, FileEntry
from daemon.workers.connection import JOB_FUNC, PAYLOAD_VERSION, batch_key, job_id, queue
from daemon.workers.queue import MAX_FAILURES, RemoteRunner
from tests.conftest import REPO, base_config, make_jpeg
from tests.helpers import wait_for
from tests.servers import ChromaServer, RedisServer, WorkerProc

QUEUE = "it"
FACE_PHOTOS = ("obama1.jpg", "two_people.jpg")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, ChromaServer]]:
    root = tmp_path_factory.mktemp("servers")
    redis, chroma = RedisServer(root / "redis"), ChromaServer(root / "chroma")
    try:
        yield redis.start(), chroma.start()
    finally:
        redis.stop()
        chroma.stop()


def workers_section(redis: RedisServer, **over: Any) -> dict[str, Any]:
    return {
        "backend": "rq",
        "redis_url": redis.url,
        "queue": QUEUE,
        "chunk_size": 2,
        "job_timeout": 60,
        "heartbeat_seconds": 1,
        **over,
    }


@pytest.fixture(scope="module")
def worker(
    servers: tuple[RedisServer, ChromaServer],
    tmp_path_factory: pytest.TempPathFactory,
    tiny_clip_config: Path,
    face_pack: Path,
) -> Iterator[WorkerProc]:
    redis, chroma = servers
    root = tmp_path_factory.mktemp("worker")
    cfg = base_config(
        root,
        tiny_clip_config,
        face_pack,
        store={"url": chroma.url},
        workers=workers_section(redis),
    )
    w = WorkerProc(root, cfg, "it-w1").start()
    client = redis.client()
    try:
        wait_for(lambda: w.registered(client), 240, "the worker to load its models and register")
        yield w
    finally:
        w.stop()


class RemoteRig:
    """One claimed batch in a real ledger, run by a pipeline whose image phases are remote."""

    def __init__(
        self,
        tmp: Path,
        servers: tuple[RedisServer, ChromaServer],
        seeds: list[int],
        photos: list[Path],
        corrupt: int | None = None,
    ) -> None:
        redis, chroma = servers
        self.redis = redis.client()
        self.config = Config.model_validate(
            {
                "data_dir": str(tmp / "data"),
                "store": {"url": chroma.url},
                "workers": workers_section(redis),
            }
        )
        self.ledger = Ledger(tmp / "ledger.sqlite3")
        self.home = tmp / "batch"
        for seed in seeds:
            make_jpeg(self.home / f"gen{seed}.jpg", seed=seed)
        for photo in photos:
            shutil.copy(photo, self.home / photo.name)
        files = sorted(self.home.iterdir())
        if corrupt is not None:
            files[corrupt].write_bytes(files[corrupt].read_bytes()[:300])
        self.entries = [
            FileEntry(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, "jpeg")
            for p in files
        ]
        self.batch_id = self.ledger.claims.reserve_batch("batch", "folder", [str(self.home)])
        self.ledger.claims.set_batch_path(self.batch_id, self.home)
        self.ledger.claims.finish_claim(self.batch_id, self.entries, [], list(PHASES))
        self.progress = Progress(data_dir=str(tmp), costs={}, clock=lambda: 0.0)
        self.store = Store(self.config)
        self.stop = threading.Event()

    def pipeline(self) -> Pipeline:
        image, batch = build_phases(self.config)
        ctx = PhaseContext(config=self.config, store=self.store, ledger=self.ledger, models=None)
        control = Control(self.ledger, self.stop, self.progress, lambda: None, 0.05)
        pipeline = Pipeline(
            ctx, image, batch, self.progress, control, lambda: None, RemoteRunner(self.config)
        )
        pipeline.setup()
        return pipeline

    def run(self) -> None:
        self.pipeline().run(self.ledger.start_batch(self.batch_id))

    def image_states(self) -> dict[tuple[str, str], str]:
        rows = self.ledger.query(
            "SELECT i.rel_path, p.phase, p.state FROM image_phases p JOIN images i"
            " USING(image_id) WHERE i.batch_id=?",
            (self.batch_id,),
        )
        return {(r["rel_path"], r["phase"]): r["state"] for r in rows}

    def shas(self) -> list[str]:
        return [e.sha256 for e in self.entries]

    def jobs_left(self) -> list[bytes]:
        return list(self.redis.scan_iter(f"rq:job:{QUEUE}-b{self.batch_id}-*"))


def test_a_batch_runs_on_a_worker_and_every_image_lands_once(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
    shared_photos: Path,
) -> None:
    rig = RemoteRig(
        tmp_path, servers, [101, 102, 103, 104], [shared_photos / "mixed" / n for n in FACE_PHOTOS]
    )
    rig.run()

    steps = rig.ledger.step_counts([rig.batch_id])[rig.batch_id]
    assert steps["embedding"] == [6, 6] and steps["faces"] == [6, 6]
    states = {p: r["state"] for p, r in rig.ledger.batch_phases(rig.batch_id).items()}
    assert states == dict.fromkeys(PHASES, "completed")
    assert set(rig.image_states().values()) <= {"done", "no_faces"}
    # Every photo's vector is in the Chroma server, under its content hash.
    assert rig.store.image_ids_present(rig.shas()) == set(rig.shas())
    stored = rig.store.get_images(rig.shas())
    assert {Path(r["metadata"]["path"]).parent for r in stored} == {rig.home}
    # The face rows the daemon wrote from the worker's results match the vectors it upserted.
    rows = rig.ledger.query("SELECT face_id, sha256 FROM faces WHERE batch_id=?", (rig.batch_id,))
    face_ids = sorted(r["face_id"] for r in rows)
    assert len(face_ids) >= 3  # obama1 has one face, two_people two
    assert sorted(rig.store.get_faces(ids=face_ids).ids) == face_ids
    assert len(rig.store.get_faces(where={"image_id": {"$in": rig.shas()}})) == len(face_ids)
    # Nothing is left in Redis: the jobs, their results and the batch's set are gone.
    assert rig.jobs_left() == []
    assert not rig.redis.exists(batch_key(QUEUE, rig.batch_id))


def test_a_chunk_done_twice_is_recorded_once(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A restarted daemon finds two finished attempts of one chunk (its worker seemed dead, a
    second did it again): the first result is recorded, the second changes nothing."""
    from rq.job import Job
    from rq.serializers import JSONSerializer

    rig = RemoteRig(tmp_path, servers, [201, 202], [], corrupt=0)
    pending = rig.ledger.pending_images(rig.batch_id)
    payload = {
        "v": PAYLOAD_VERSION,
        "batch_id": rig.batch_id,
        "name": "batch",
        "root": str(rig.home),
        "chunk": 0,
        "images": [
            {
                "image_id": p.image_id,
                "sha256": p.sha256,
                "rel_path": p.rel_path,
                "phases": sorted(p.phases),
            }
            for p in pending
        ],
    }
    q = queue(rig.config.workers, rig.redis)
    ids = [job_id(QUEUE, rig.batch_id, 0, attempt) for attempt in (1, 2)]
    for attempt, jid in enumerate(ids, 1):
        q.enqueue_call(JOB_FUNC, args=({**payload, "attempt": attempt},), job_id=jid)
        rig.redis.sadd(batch_key(QUEUE, rig.batch_id), jid)

    def finished() -> bool:
        worker.assert_alive()
        jobs = Job.fetch_many(ids, connection=rig.redis, serializer=JSONSerializer)
        return all(j is not None and j.get_status() == "finished" for j in jobs)

    wait_for(finished, 120, "the worker to finish both attempts")
    with caplog.at_level(logging.INFO, logger="daemon.workers.queue"):
        rig.run()

    assert "found 2 of its jobs in Redis (2 results recorded, 0 still queued" in caplog.text
    assert "0 chunk jobs" in caplog.text  # nothing was queued again
    errors = rig.ledger.query("SELECT file, code FROM errors WHERE batch_id=?", (rig.batch_id,))
    assert [(e["file"], e["code"]) for e in errors] == [("gen201.jpg", "UNREADABLE_IMAGE")]
    states = rig.image_states()
    assert states[("gen202.jpg", "embedding")] == "done"
    assert states[("gen201.jpg", "embedding")] == states[("gen201.jpg", "faces")] == "failed"
    assert rig.store.image_ids_present(rig.shas()) == {rig.entries[1].sha256}
    assert rig.jobs_left() == []


def test_a_chunk_that_keeps_failing_fails_the_batch_with_the_workers_reason(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
) -> None:
    rig = RemoteRig(tmp_path, servers, [301], [])
    # A phase no worker runs: every attempt of the chunk fails on the worker.
    with rig.ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO image_phases(image_id, phase, state) SELECT image_id, 'sharpen',"
            " 'pending' FROM images WHERE batch_id=?",
            (rig.batch_id,),
        )
    with pytest.raises(WorkerFailed) as failed:
        rig.run()
    assert f"failed {MAX_FAILURES} times" in failed.value.message
    assert "needs phases ['sharpen']" in failed.value.message
    assert rig.jobs_left() == []  # a failed batch takes its jobs back


def test_workers_lists_the_worker_and_a_silent_one_as_dead(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
) -> None:
    def listing() -> dict[str, Any]:
        out = subprocess.run(
            [*worker.command, "workers", "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return json.loads(out.stdout)

    def state() -> str:
        return next(w["state"] for w in listing()["workers"] if w["name"] == worker.name)

    first = listing()
    assert first["queue"] == QUEUE and first["reachable"] is True
    assert state() == "idle"
    worker.signal(signal.SIGSTOP)  # no heartbeats from here on: dead, never busy
    try:
        wait_for(lambda: state() == "dead", 60, "the frozen worker to be listed dead")
    finally:
        worker.signal(signal.SIGCONT)
    wait_for(lambda: state() == "idle", 60, "the worker to be alive again")
    human = subprocess.run(
        [*worker.command, "workers"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert human.returncode == 0, human.stderr
    assert worker.name in human.stdout and "idle" in human.stdout


def test_workers_says_redis_unavailable_with_the_url(tmp_path: Path) -> None:
    from tests.servers import free_port

    cfg = tmp_path / "c.yaml"
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    cfg.write_text(json.dumps({"workers": {"redis_url": url}}))
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "--config", str(cfg), "workers", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "REDIS_UNAVAILABLE" in out.stderr
    assert url.replace(":hunter2", "***") in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


def test_pause_holds_the_results_and_resume_records_them(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
) -> None:
    from rq.job import Job
    from rq.serializers import JSONSerializer

    rig = RemoteRig(tmp_path, servers, [401, 402, 403, 404, 405, 406], [])
    rig.ledger.set_paused(True)  # paused before the batch starts: it queues, then holds
    runner = threading.Thread(target=rig.run)
    runner.start()
    try:
        wait_for(lambda: rig.progress.status == DaemonStatus.PAUSED, 60, "the batch to pause")
        ids = [job_id(QUEUE, rig.batch_id, c, 1) for c in range(2)]  # the first window

        def done() -> bool:
            jobs = Job.fetch_many(ids, connection=rig.redis, serializer=JSONSerializer)
            return all(j is not None and j.get_status() == "finished" for j in jobs)

        wait_for(done, 120, "the worker to finish the queued chunks")
        # The worker's results wait in Redis; nothing reaches the ledger while paused.
        assert rig.ledger.step_counts([rig.batch_id])[rig.batch_id]["embedding"] == [0, 6]
        assert rig.progress.status == DaemonStatus.PAUSED
        rig.ledger.set_paused(False)
        runner.join(timeout=120)
        assert not runner.is_alive()
    finally:
        rig.ledger.set_paused(False)
        rig.stop.set()
        runner.join(timeout=60)
    assert rig.ledger.step_counts([rig.batch_id])[rig.batch_id]["faces"] == [6, 6]
    assert rig.store.image_ids_present(rig.shas()) == set(rig.shas())


def test_cancel_takes_the_queued_chunks_back(
    tmp_path: Path,
    servers: tuple[RedisServer, ChromaServer],
    worker: WorkerProc,
) -> None:
    rig = RemoteRig(tmp_path, servers, [501, 502, 503, 504, 505, 506, 507, 508], [])
    batch = rig.ledger.start_batch(rig.batch_id)
    rig.ledger.request_cancel(rig.batch_id)  # acted on at the first check, after queueing
    with pytest.raises(Cancelled):
        rig.pipeline().run(batch)
    assert rig.jobs_left() == [] and not rig.redis.exists(batch_key(QUEUE, rig.batch_id))
    left = rig.ledger.pending_images(rig.batch_id)
    assert len(left) >= 4  # the chunks never queued stay pending, for `queue retry`
