"""Near and exact duplicates against a real ledger and a real ChromaDB (synthetic vectors).

The vectors are placed at known cosine similarities, so which photos are
copies of one is known exactly; the metadata is what the embedding phase
writes (path, batch_id, width, height, captured_at, captured_ts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.ledger.ledger import Ledger
from daemon.store.chroma import Store
from daemon.store.duplicates import find_duplicates
from daemon.store.search import captured_ts
from daemon.vocab import FileEntry

DIM = 32


def near(rng: np.random.Generator, v: np.ndarray, cos: float) -> np.ndarray:
    noise = rng.standard_normal(DIM)
    noise -= (noise @ v) * v
    noise /= np.linalg.norm(noise)
    return (cos * v + np.sqrt(1 - cos**2) * noise).astype(np.float32)


@pytest.fixture
def library(tmp_path: Path) -> tuple[Store, Ledger, dict[str, str]]:
    rng = np.random.default_rng(2)
    cfg = Config.model_validate({"data_dir": str(tmp_path / "data")})
    store, ledger = Store(cfg), Ledger(cfg.ledger_path)
    store.open_images("synthetic", DIM)
    base = rng.standard_normal((3, DIM))
    a, b, c = (v / np.linalg.norm(v) for v in base)
    photos = {  # name: (vector, width, height, captured_at)
        "a.jpg": (a, 4000, 3000, "2024-06-01T10:00:00"),
        "a_small.jpg": (near(rng, a, 0.995), 2000, 1500, "2024-06-01T10:00:00"),
        "a_crop.jpg": (near(rng, a, 0.99), 3800, 2900, "2024-06-01T10:00:00"),
        "b_late.jpg": (b, 1000, 800, "2023-05-02T08:00:00"),
        "b_early.jpg": (near(rng, b, 0.985), 1000, 800, "2022-01-01T08:00:00"),
        "c.jpg": (c, 640, 480, None),
    }
    for i in range(20):  # photos like nothing else
        v = rng.standard_normal(DIM)
        photos[f"other{i}.jpg"] = (v / np.linalg.norm(v), 800, 600, None)
    sha = {name: f"{i:064x}" for i, name in enumerate(photos)}
    store.upsert_images(
        list(sha.values()),
        np.stack([p[0] for p in photos.values()]).astype(np.float32),
        [
            {
                "path": f"/data/batches/000001-first/{name}",
                "batch_id": 1,
                "width": w,
                "height": h,
                "captured_at": when,
                "captured_ts": captured_ts(when),
            }
            for name, (_, w, h, when) in photos.items()
        ],
    )
    # The ledger: batch 1 held every photo; batch 2 the same c.jpg again, byte for byte.
    for batch, names in ((1, list(photos)), (2, ["c.jpg"])):
        bid = ledger.claims.reserve_batch(f"b{batch}", "folder", [f"b{batch}"])
        ledger.claims.set_batch_path(bid, f"/data/batches/00000{bid}-b{batch}")
        files = [FileEntry(n if batch == 1 else "again/c.jpg", sha[n], 1, "jpeg") for n in names]
        ledger.claims.finish_claim(bid, files, [], ["embedding"])
    return store, ledger, sha


def test_copies_are_grouped_with_the_best_copy_first(library) -> None:
    store, ledger, sha = library
    seen, groups = find_duplicates(store, ledger, 0.98)
    assert seen == 26
    names = [[Path(m.path).name for m in g.members] for g in groups]
    assert names == [["a.jpg", "a_crop.jpg", "a_small.jpg"], ["b_early.jpg", "b_late.jpg"],
                     ["c.jpg", "c.jpg"]]  # fmt: skip
    a, b, c = groups
    # Largest resolution wins; at equal resolution, the earlier capture time.
    assert a.best.path.endswith("/a.jpg") and a.best.best
    assert [m.best for m in a.members] == [True, False, False]
    assert (a.best.width, a.best.height) == (4000, 3000)
    assert b.best.path.endswith("b_early.jpg")
    assert all(0.98 <= m.similarity <= 1.0 for m in a.members + b.members)
    assert not any(m.exact for m in a.members + b.members)
    # The same file dropped twice: the first copy is the best, the other is in batch 2.
    assert [m.exact for m in c.members] == [True, True]
    assert [m.batch_id for m in c.members] == [1, 2]
    assert c.members[1].path == "/data/batches/000002-b2/again/c.jpg"
    assert {m.image_id for m in c.members} == {sha["c.jpg"]}


def test_a_stricter_threshold_finds_fewer(library) -> None:
    store, ledger, _ = library
    _, groups = find_duplicates(store, ledger, 0.992)
    names = [sorted(Path(m.path).name for m in g.members) for g in groups]
    assert names == [["a.jpg", "a_small.jpg"], ["c.jpg", "c.jpg"]]
    _, groups = find_duplicates(store, ledger, 1.0)
    assert [len(g.members) for g in groups] == [2]  # only the exact copy is left


def test_at_equal_size_and_time_the_larger_file_is_the_better_copy(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cfg = Config.model_validate({"data_dir": str(tmp_path / "data")})
    store, ledger = Store(cfg), Ledger(cfg.ledger_path)
    store.open_images("synthetic", DIM)
    v = rng.standard_normal(DIM)
    v /= np.linalg.norm(v)
    sent, kept = tmp_path / "IMG_1-sent.jpg", tmp_path / "IMG_1.jpg"
    sent.write_bytes(b"x" * 1000)  # re-encoded for sending: smaller
    kept.write_bytes(b"x" * 5000)
    store.upsert_images(
        ["a" * 64, "b" * 64],
        np.stack([v, near(rng, v, 0.999)]).astype(np.float32),
        [{"path": str(p), "batch_id": 1, "width": 800, "height": 600} for p in (sent, kept)],
    )
    _, (group,) = find_duplicates(store, ledger, 0.98)
    assert [(m.path, m.bytes, m.best) for m in group.members] == [
        (str(kept), 5000, True),
        (str(sent), 1000, False),
    ]
