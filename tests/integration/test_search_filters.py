"""Search filters run inside Chroma and give what a brute-force filter over the library gives.

A library of synthetic vectors with the image metadata the daemon writes
(`people`, `captured_ts`, `batch_id`) in a real ChromaDB; each filtered query
is compared with an exact scan of the same vectors, filtered here in Python.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from daemon.config import Config
from daemon.store.chroma import Store
from daemon.store.search import Filters, captured_ts, nearest, parse_when

N, DIM, K = 400, 32, 10  # N is also the bound that makes `nearest` rank here
DAY = 86400.0
START = parse_when("2020-01-01")


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, np.ndarray, list[dict]]:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    metas = []
    for i in range(N):
        meta: dict = {"path": f"/p/{i}.jpg", "batch_id": int(rng.integers(1, 6))}
        people = sorted(set(rng.choice(6, size=int(rng.integers(0, 4))).tolist()))
        if people:
            meta["people"] = [p + 1 for p in people]
        if rng.random() < 0.8:  # some photos say nothing of when they were taken
            meta["captured_ts"] = START + float(rng.integers(0, 5 * 365)) * DAY
        metas.append(meta)
    root = tmp_path_factory.mktemp("filters")
    store = Store(Config.model_validate({"data_dir": str(root / "data")}))
    store.open_images("synthetic", DIM)
    store.upsert_images([f"{i:064x}" for i in range(N)], x, metas)
    return store, x, metas


def brute(x: np.ndarray, metas: list[dict], q: np.ndarray, f: Filters) -> list[str]:
    def passes(m: dict) -> bool:
        ts = m.get("captured_ts")
        return (
            all(p in m.get("people", []) for p in f.people)
            and (f.after is None or (ts is not None and ts >= f.after))
            and (f.before is None or (ts is not None and ts < f.before))
            and (not f.batches or m["batch_id"] in f.batches)
        )

    keep = [i for i, m in enumerate(metas) if passes(m)]
    order = sorted(keep, key=lambda i: -float(x[i] @ q))
    return [f"{i:064x}" for i in order[:K]]


FILTERS = [
    Filters(),
    Filters(people=(1,)),
    Filters(people=(2, 5)),
    Filters(after=parse_when("2022-03-01")),
    Filters(before=parse_when("2021")),
    Filters(after=parse_when("2021-06"), before=parse_when("2021-09-15")),
    Filters(batches=(3,)),
    Filters(batches=(1, 4)),
    Filters(people=(3,), after=parse_when("2022"), batches=(2, 3, 5)),
    Filters(people=(1, 2, 3)),  # few photos show all three: fewer than K results
]


@pytest.mark.parametrize("exact", [False, True], ids=["chroma-hnsw", "ranked-here"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: str(f.where()))
def test_filtered_results_equal_a_brute_force_filter(library, filters: Filters, exact) -> None:
    """Both ways of searching within a filter: Chroma's filtered HNSW search, and (when
    few photos can pass) the passing photos' vectors from Chroma ranked here."""
    store, x, metas = library
    filters = replace(filters, at_most=N if exact else None)
    rng = np.random.default_rng(11)
    for q in rng.standard_normal((12, DIM)).astype(np.float32):
        q /= np.linalg.norm(q)
        hits = nearest(store, q, K, filters)
        assert [h.id for h in hits] == brute(x, metas, q, filters)
        assert all(h.metadata["path"] == f"/p/{int(h.id, 16)}.jpg" for h in hits)
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert np.allclose(scores, [float(x[int(h.id, 16)] @ q) for h in hits], atol=1e-5)


def test_where_clauses_are_what_chroma_expects() -> None:
    assert Filters().where() is None
    assert Filters(people=(4,)).where() == {"people": {"$contains": 4}}
    assert Filters(people=(4, 9), batches=(2,)).where() == {
        "$and": [
            {"people": {"$contains": 4}},
            {"people": {"$contains": 9}},
            {"batch_id": 2},
        ]
    }
    assert Filters(after=1.0, before=2.0, batches=(1, 2)).where() == {
        "$and": [
            {"captured_ts": {"$gte": 1.0}},
            {"captured_ts": {"$lt": 2.0}},
            {"batch_id": {"$in": [1, 2]}},
        ]
    }


def test_capture_times_are_wall_clock_seconds() -> None:
    # The camera's clock, whatever offset it wrote: a photo at 10:00 in Tokyo and one at
    # 10:00 in Paris both count as 10:00.
    assert captured_ts("2024-06-01T10:00:00") == parse_when("2024-06-01T10:00:00")
    assert captured_ts("2024-06-01T10:00:00+09:00") == captured_ts("2024-06-01T10:00:00-02:00")
    assert captured_ts(None) is None and captured_ts("garbage") is None
    assert parse_when("2024") == parse_when("2024-01-01") == parse_when("2024-01")
    for bad in ("yesterday", "2024-13-01", "20240"):
        with pytest.raises(ValueError):
            parse_when(bad)
    days = [parse_when(f"2024-06-{d:02d}") for d in range(1, 4)]
    assert all(b - a == DAY for a, b in itertools.pairwise(days))


def test_a_photo_of_two_people_is_found_by_either_and_by_both(library) -> None:
    store, x, metas = library
    both = next(i for i, m in enumerate(metas) if {2, 5} <= set(m.get("people", [])))
    ids = {
        p: {h.id for h in store.query_images(x[both], N, Filters(people=p).where())}
        for p in ((2,), (5,), (2, 5))
    }
    assert f"{both:064x}" in ids[(2,)] & ids[(5,)] & ids[(2, 5)]
    assert ids[(2, 5)] == ids[(2,)] & ids[(5,)]
