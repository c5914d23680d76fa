"""The vector store against real ChromaDB: embedded on tmp dirs, and a real server."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.errors import InvalidState, ModelMismatch, StoreUnavailable
from daemon.store.chroma import Store


def make_config(tmp: Path, **store: object) -> Config:
    return Config.model_validate({"data_dir": str(tmp / "data"), "store": store})


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def image_meta(i: int, **extra: object) -> dict:
    return {"path": f"/photos/{i}.jpg", "batch_id": 1, "width": 640, "height": 480, **extra}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(make_config(tmp_path))
    s.open_images("tiny", 16)
    return s


def test_upsert_twice_keeps_one_record_per_id_and_updates_metadata(store: Store) -> None:
    ids = [f"{i:064x}" for i in range(5)]
    vectors = unit_vectors(5, 16)
    store.upsert_images(ids, vectors, [image_meta(i, captured_at=None) for i in range(5)])
    store.upsert_images(
        ids, vectors, [image_meta(i, batch_id=2, tags=["a", "b"]) for i in range(5)]
    )

    assert store.count_images() == 5
    rows = store.get_images([ids[3], "missing", ids[0]])
    assert [r["id"] for r in rows] == [ids[3], ids[0]]
    meta = rows[0]["metadata"]
    assert meta["batch_id"] == 2
    assert "captured_at" not in meta  # None is dropped, not stored
    assert json.loads(meta["tags"]) == ["a", "b"]
    assert store.image_ids_present([ids[1], "missing"]) == {ids[1]}


def test_the_same_id_twice_in_one_call_is_one_record(store: Store) -> None:
    vectors = unit_vectors(2, 16)
    store.upsert_images(["x", "x"], vectors, [image_meta(1), image_meta(2)])
    assert store.count_images() == 1
    assert store.get_images(["x"])[0]["metadata"]["path"] == "/photos/2.jpg"


def test_query_finds_the_exact_vector_first_with_sorted_scores(store: Store) -> None:
    vectors = unit_vectors(200, 16, seed=1)
    ids = [f"img{i}" for i in range(200)]
    store.upsert_images(ids, vectors, [image_meta(i) for i in range(200)])

    hits = store.query_images(vectors[42], k=10)
    assert len(hits) == 10
    assert hits[0].id == "img42"
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert hits[0].metadata["path"] == "/photos/42.jpg"
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-4 <= s <= 1.0 + 1e-4 for s in scores)
    assert len(store.query_images(vectors[0], k=500)) == 200


def test_an_empty_or_missing_collection_answers_empty(tmp_path: Path) -> None:
    s = Store(make_config(tmp_path))
    assert s.count_images() == 0
    assert s.query_images(unit_vectors(1, 16)[0], k=5) == []
    assert s.get_faces().ids == []
    assert s.open_images("tiny", 16, create=False) is False


def test_writing_before_opening_is_refused(tmp_path: Path) -> None:
    s = Store(make_config(tmp_path))
    with pytest.raises(InvalidState):
        s.upsert_faces(["f"], unit_vectors(1, 8), [{"batch_id": 1}])


PERSIST_CHECK = """
import sys, numpy as np
from daemon.config import Config
from daemon.store.chroma import Store
s = Store(Config.model_validate({"data_dir": sys.argv[1]}))
s.open_images("tiny", 16)
probe = np.load(sys.argv[2])
print(s.count_images(), s.query_images(probe, k=1)[0].id)
"""


def test_a_new_process_sees_what_was_written(tmp_path: Path) -> None:
    # A new Store in this process would share chromadb's per-path client cache,
    # so the reopening happens in a fresh interpreter, as the CLI does.
    cfg = make_config(tmp_path)
    s = Store(cfg)
    s.open_images("tiny", 16)
    vectors = unit_vectors(30, 16, seed=2)
    s.upsert_images([f"p{i}" for i in range(30)], vectors, [image_meta(i) for i in range(30)])
    np.save(tmp_path / "probe.npy", vectors[7])

    out = subprocess.run(
        [sys.executable, "-c", PERSIST_CHECK, str(cfg.data_dir), str(tmp_path / "probe.npy")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == ["30", "p7"]


def test_another_model_or_dim_is_refused_naming_both(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    s = Store(cfg)
    s.open_images("ViT-B-32", 16)
    s.upsert_images(["a"], unit_vectors(1, 16), [image_meta(1)])

    with pytest.raises(ModelMismatch) as exc:
        s.open_images("ViT-L-14", 16)
    assert "configured ViT-L-14 dim 16 vs stored ViT-B-32 dim 16" in exc.value.message
    # Another CLIP model is a re-index away (its own collection); faces have no such way.
    assert "ViT-B-32" in exc.value.hint and "imgtrain reindex" in exc.value.hint
    s.open_faces("buffalo", 16)
    s.upsert_faces(["a:0"], unit_vectors(1, 16), [{"batch_id": 1}])
    with pytest.raises(ModelMismatch) as exc:
        s.open_faces("antelope", 16)
    assert "buffalo" in exc.value.hint and "new library" in exc.value.hint

    with pytest.raises(ModelMismatch) as exc:
        s.open_images("ViT-B-32", 32)
    assert "dim 32" in exc.value.message and "dim 16" in exc.value.message
    assert s.count_images() == 1  # nothing was touched


def test_an_empty_collection_is_relabelled(tmp_path: Path) -> None:
    s = Store(make_config(tmp_path))
    s.open_faces("pack-a", 8)
    s.open_faces("pack-b", 16)
    s.upsert_faces(["f"], unit_vectors(1, 16), [{"batch_id": 1}])
    with pytest.raises(ModelMismatch):
        s.open_faces("pack-a", 8)


def test_faces_roundtrip_with_partial_updates_and_filters(tmp_path: Path) -> None:
    s = Store(make_config(tmp_path))
    s.open_faces("mbf", 8)
    vectors = unit_vectors(6, 8, seed=3)
    ids = [f"sha{i // 2}:{i % 2}" for i in range(6)]
    metas = [
        {"image_id": f"sha{i // 2}", "batch_id": 1 if i < 4 else 2, "person": "", "bbox": [1, 2]}
        for i in range(6)
    ]
    s.upsert_faces(ids, vectors, metas)
    assert s.count_faces() == 6

    rows = s.get_faces(ids=[ids[4], ids[1]])
    assert rows.embeddings.shape == (2, 8) and rows.embeddings.dtype == np.float32
    by_id = dict(zip(rows.ids, rows.embeddings, strict=True))
    np.testing.assert_allclose(by_id[ids[4]], vectors[4], atol=1e-6)

    s.update_faces([ids[0], ids[1]], [{"person": "alice", "cluster": "3"}, {"person": "bob"}])
    rows = s.get_faces(ids=[ids[0], ids[1]])
    meta = dict(zip(rows.ids, rows.metadatas, strict=True))
    assert meta[ids[0]]["person"] == "alice" and meta[ids[0]]["cluster"] == "3"
    assert meta[ids[1]]["person"] == "bob" and meta[ids[1]]["batch_id"] == 1  # rest kept
    assert json.loads(meta[ids[0]]["bbox"]) == [1, 2]
    s.update_faces([ids[0]], [{"cluster": None}])
    assert "cluster" not in s.get_faces(ids=[ids[0]]).metadatas[0]

    batch2 = s.get_faces(where={"batch_id": 2})
    assert sorted(batch2.ids) == sorted(ids[4:]) and batch2.embeddings.shape == (2, 8)
    assert len(s.get_faces(where={"batch_id": 1}, limit=3)) == 3
    hits = s.query_faces(vectors[0], k=3, where={"batch_id": 2})
    assert {h.id for h in hits} == set(ids[4:])


def test_writes_larger_than_chromas_batch_limit(tmp_path: Path) -> None:
    s = Store(make_config(tmp_path))
    s.open_faces("mbf", 4)
    n = s._client.get_max_batch_size() + 10
    ids = [f"f{i}" for i in range(n)]
    s.upsert_faces(ids, unit_vectors(n, 4), [{"batch_id": 1}] * n)
    assert s.count_faces() == n
    assert len(s.get_faces(ids=ids)) == n
    s.update_faces(ids, [{"person": "p"}] * n)
    assert len(s.get_faces(where={"person": "p"})) == n


# -- the Chroma server path ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_heartbeat(
    url: str, proc: subprocess.Popen, log: Path, deadline_s: float = 60.0
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chroma run exited with {proc.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"the Chroma server at {url} did not answer its heartbeat within {deadline_s}s")


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if chroma is None:
        pytest.fail("the installed chromadb has no `chroma` command beside the interpreter")
    port = free_port()
    args = [chroma, "run", "--path", str(tmp_path / "server"), "--host", "127.0.0.1"]
    log = tmp_path / "chroma.log"
    # A file, not a pipe: an unread pipe fills up and stalls the server.
    with log.open("w") as out:
        proc = subprocess.Popen([*args, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_heartbeat(url, proc, log)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_store_through_a_chroma_server(
    tmp_path: Path, chroma_server: tuple[str, subprocess.Popen]
) -> None:
    url, server = chroma_server
    s = Store(make_config(tmp_path, url=url))
    s.open_images("tiny", 16)
    vectors = unit_vectors(20, 16, seed=4)
    ids = [f"h{i}" for i in range(20)]
    s.upsert_images(ids, vectors, [image_meta(i) for i in range(20)])
    s.upsert_images(ids[:5], vectors[:5], [image_meta(i) for i in range(5)])
    assert s.count_images() == 20
    hits = s.query_images(vectors[11], k=3)
    assert hits[0].id == "h11" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert not (tmp_path / "data" / "chroma").exists()  # nothing embedded on the side

    s.open_faces("faces-a", 16)
    s.upsert_faces(["h0:0"], vectors[:1], [{"batch_id": 1}])
    with pytest.raises(ModelMismatch) as exc:
        Store(make_config(tmp_path, url=url)).open_faces("faces-b", 16)
    assert "store.url" in exc.value.hint

    server.terminate()
    server.wait(timeout=20)
    with pytest.raises(StoreUnavailable) as down:
        s.count_images()
    assert url in down.value.message


def test_an_unreachable_server_is_store_unavailable(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as exc:
        Store(make_config(tmp_path, url=url))
    assert url in exc.value.message
