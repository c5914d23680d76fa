"""How workers reach the photos, end to end: `workers.path_map` and `workers.send_bytes`.

The daemon and an `imgtrain worker` run as real subprocesses against a real redis-server
and `chroma run` (one of each for the module). Each test takes the worker's other way to
the photos away, so only the way under test can work: with path_map the claimed folder is
moved to where only the map points, after the daemon queued its chunks and before the
worker starts; with send_bytes the worker's path_map points the daemon's directory at a
path that does not exist.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for
from tests.servers import ChromaServer, RedisServer, WorkerProc

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, ChromaServer]]:
    root = tmp_path_factory.mktemp("servers")
    redis, chroma = RedisServer(root / "redis"), ChromaServer(root / "chroma")
    try:
        yield redis.start(), chroma.start()
    finally:
        redis.stop()
        chroma.stop()


def make_daemon(
    factory: Callable[..., Daemon], servers: tuple[RedisServer, ChromaServer], **workers: object
) -> Daemon:
    redis, chroma = servers
    return factory(
        store={"url": chroma.url},
        workers={
            "backend": "rq",
            "redis_url": redis.url,
            "chunk_size": 2,
            "job_timeout": 60,
            "heartbeat_seconds": 1,
            **workers,
        },
    )


def worker_for(daemon: Daemon, path_map: dict[str, str]) -> WorkerProc:
    cfg = yaml.safe_load(daemon.config_path.read_text())
    cfg["workers"]["path_map"] = path_map
    return WorkerProc(daemon.root, cfg, "w")


def stage(root: Path, seed: int, shared_photos: Path) -> Path:
    folder = root / "staging" / f"photos{seed}"
    for i in range(4):
        make_jpeg(folder / f"gen{i}.jpg", seed=seed + i)
    obama = sorted((shared_photos / "people" / "obama").iterdir())[0]
    shutil.copy(obama, folder / "obama.jpg")
    return folder


def stored_paths(chroma: ChromaServer, daemon: Daemon) -> dict[str, str]:
    """{sha256: path in the vector's metadata} for the daemon's images the server holds."""
    import chromadb
    from chromadb.config import Settings

    ledger = daemon.ledger()
    try:
        shas = [r["sha256"] for r in ledger.query("SELECT sha256 FROM images")]
    finally:
        ledger.close()
    client = chromadb.HttpClient(
        host="127.0.0.1", port=chroma.port, settings=Settings(anonymized_telemetry=False)
    )
    got = client.get_collection("images").get(ids=shas, include=["metadatas"])
    return {i: str(m["path"]) for i, m in zip(got["ids"], got["metadatas"], strict=True)}


def batch_home(daemon: Daemon) -> Path:
    ledger = daemon.ledger()
    try:
        return Path(ledger.query("SELECT path FROM batches")[0]["path"])
    finally:
        ledger.close()


def test_path_map_lets_a_worker_read_the_photos_where_it_mounts_them(
    daemon_factory: Callable[..., Daemon],
    servers: tuple[RedisServer, ChromaServer],
    tmp_path: Path,
    shared_photos: Path,
) -> None:
    redis, chroma = servers
    d = make_daemon(daemon_factory, servers, queue="pathmap")
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 120, "the daemon idle")
    stage(tmp_path, 500, shared_photos).rename(d.inbox / "photos500")
    client = redis.client()
    wait_for(lambda: client.llen("rq:queue:pathmap") > 0, 120, "chunk jobs queued")
    home = batch_home(d)
    # The worker's machine mounts the daemon's batches directory elsewhere.
    mount = tmp_path / "mnt" / "imgtrain-batches"
    mount.parent.mkdir()
    home.parent.rename(mount)
    w = worker_for(d, {str(home.parent): str(mount)}).start()
    try:
        final = d.wait_idle_with(1, timeout=240)
    finally:
        w.stop()
    assert final["last_batch"]["processed"] == 5
    assert final["last_batch"]["failed_images"] == 0 and final["errors"] == []
    assert final["last_batch"]["faces"] >= 1
    # The vectors name the photos where the daemon keeps them, not where the worker read them.
    paths = stored_paths(chroma, d)
    assert len(paths) == 5 and {str(Path(p).parent) for p in paths.values()} == {str(home)}


def test_send_bytes_needs_no_shared_storage(
    daemon_factory: Callable[..., Daemon],
    servers: tuple[RedisServer, ChromaServer],
    tmp_path: Path,
    shared_photos: Path,
) -> None:
    redis, chroma = servers
    d = make_daemon(daemon_factory, servers, queue="bytes", send_bytes=True)
    folder = stage(tmp_path, 600, shared_photos)
    broken = folder / "gen3.jpg"
    broken.write_bytes(broken.read_bytes()[:400])  # cut off mid-copy: a per-file error
    # By path this worker can reach nothing of the daemon's.
    w = worker_for(d, {str(d.data): "/nonexistent/imgtrain-test"}).start()
    try:
        d.start()
        wait_for(lambda: w.registered(redis.client()), 240, "the worker to register")
        folder.rename(d.inbox / folder.name)
        final = d.wait_idle_with(1, timeout=240)
    finally:
        w.stop()
    assert final["last_batch"]["processed"] == 4
    assert final["last_batch"]["failed_images"] == 1
    assert [(e["code"], e["file"]) for e in final["errors"]] == [("UNREADABLE_IMAGE", "gen3.jpg")]
    assert "truncated or corrupt jpeg" in final["errors"][0]["message"]
    assert final["last_batch"]["faces"] >= 1
    paths = stored_paths(chroma, d)
    assert len(paths) == 4 and {str(Path(p).parent) for p in paths.values()} == {str(batch_home(d))}
