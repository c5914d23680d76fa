"""Benchmark: face clustering cost per batch as the library grows, and a full recluster.

    python bench/bench_clustering.py [--quick] [--skip-naive] [--chroma 10000,100000]

Synthetic 128-d faces around a few thousand identities (Zipf-sized, 20% of
faces are one-off strangers; same-person cosine 0.55-0.85, about what the
real MobileFaceNet gives: 0.58-0.77). Three kinds of numbers:

* engine: `daemon.facecluster` alone (no SQLite, no Chroma): one 100-photo
  batch (~130 faces) arriving in a library of N faces, and a full recluster;
* phase: the real ClusteringPhase / recluster_all on a real SQLite ledger and
  a real embedded ChromaDB holding 10,000 faces (--chroma 10000,100000 for
  more; cold = the pool's vectors are read from Chroma, warm = they are
  cached from the previous batch);
* naive: hdbscan over the whole bounded pool for every batch (the design the
  phase does not use), and PCA's effect on hdbscan's speed and quality.

Prints a table and writes bench/results/clustering.json. Medians of repeats.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from daemon.config import Config  # noqa: E402
from daemon.people.engine import (  # noqa: E402
    FaceSet,
    Params,
    find_groups,
    plan_batch,
)
from daemon.people.rebuild import recluster  # noqa: E402

DIM = 128
IDENTITIES = 3000
POOL_MAX = 20_000


class Synth:
    """A library: identity centres, faces in arrival order, and the truth."""

    def __init__(self, seed: int = 0, lookalike: float = 0.0, low: float = 0.55) -> None:
        self.rng = np.random.default_rng(seed)
        self.low = low
        c = self.rng.standard_normal((IDENTITIES, DIM))
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        if lookalike:  # every odd identity resembles the one before it (siblings, say)
            odd = c[1::2] - (c[1::2] * c[0::2]).sum(1, keepdims=True) * c[0::2]
            odd /= np.linalg.norm(odd, axis=1, keepdims=True)
            c[1::2] = lookalike * c[0::2] + np.sqrt(1 - lookalike**2) * odd
        self.centres = c.astype(np.float32)
        w = 1.0 / np.arange(1, IDENTITIES + 1) ** 0.8
        self.weights = w / w.sum()
        self.next_stranger = IDENTITIES
        self.n = 0

    def faces(self, n: int, stranger_share: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
        who = self.rng.choice(IDENTITIES, size=n, p=self.weights)
        strangers = self.rng.random(n) < stranger_share
        who[strangers] = self.next_stranger + np.arange(strangers.sum())
        self.next_stranger += int(strangers.sum())
        s = self.rng.uniform(self.low, 0.85, n)
        noise = self.rng.standard_normal((n, DIM))
        known = ~strangers
        centre = np.zeros((n, DIM))
        centre[known] = self.centres[who[known]]
        noise -= (noise * centre).sum(1, keepdims=True) * centre
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        v = np.where(
            known[:, None], np.sqrt(s)[:, None] * centre + np.sqrt(1 - s)[:, None] * noise, noise
        )
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32), who

    def faceset(self, n: int, photos: int | None = None) -> tuple[FaceSet, np.ndarray]:
        """n faces; with `photos`, spread over that many photos (some photos show two)."""
        v, who = self.faces(n)
        ids = [f"{self.n + i:08x}" for i in range(n)]
        self.n += n
        owner = ids if photos is None else [ids[i % photos] for i in range(n)]
        return FaceSet([f"{o}:{i}" for i, o in enumerate(owner)], owner, np.ones(n), v), who


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def quality(labels: dict[str, int], ids: list[str], who: np.ndarray) -> dict[str, float]:
    """ARI against the true identities (noise = singletons), purity, noise share."""
    from collections import Counter

    from sklearn.metrics import adjusted_rand_score

    flat = np.asarray([labels.get(f, -1 - i) for i, f in enumerate(ids)])
    members: dict[int, list[int]] = {}
    for i, f in enumerate(ids):
        if f in labels:
            members.setdefault(labels[f], []).append(int(who[i]))
    placed = sum(len(m) for m in members.values())
    pure = sum(Counter(m).most_common(1)[0][1] for m in members.values())
    return {
        "ari": round(float(adjusted_rand_score(who, flat)), 4),
        "purity": round(pure / max(1, placed), 4),
        "noise_share": round(1 - placed / len(ids), 4),
        "clusters": len(members),
    }


def engine_library(n: int, seed: int = 0) -> tuple[Synth, FaceSet, np.ndarray, dict, float]:
    synth = Synth(seed)
    lib, who = synth.faceset(n)
    t = time.perf_counter()
    labels, groups = recluster(lib, {}, Params())
    return synth, lib, who, {"labels": labels, "groups": groups}, time.perf_counter() - t


def bench_engine(sizes: list[int], repeats: dict[int, int]) -> tuple[list[dict], dict]:
    rows, full = [], {}
    for n in sizes:
        synth, lib, who, state, seconds = engine_library(n)
        if n == max(sizes):
            full = {
                "faces": n,
                "seconds": round(seconds, 2),
                **quality(state["labels"], lib.ids, who),
            }
        noise = [i for i, f in enumerate(lib.ids) if f not in state["labels"]][-POOL_MAX:]
        pool = lib.take(np.asarray(noise[::-1], dtype=np.int64))
        batch, _ = synth.faceset(130, photos=100)

        def one(
            batch: FaceSet = batch, pool: FaceSet = pool, groups: dict = state["groups"]
        ) -> Any:
            clusters = [copy.deepcopy(g) for g in groups.values()]  # each repeat starts equal
            return plan_batch(batch, pool, [], clusters, Params())

        sec, plan = median_time(one, repeats.get(n, 3))
        rows.append(
            {
                "library": n,
                "clusters": len(state["groups"]),
                "pool": len(pool),
                "batch_faces": len(batch),
                "seconds": round(sec, 4),
                "attached": sum(1 for k in plan.cluster.values() if k in state["groups"]),
                "new_clusters": sum(1 for k in plan.clusters if k not in state["groups"]),
            }
        )
    return rows, full


def bench_pca(n: int, dims: list[int]) -> list[dict]:
    """PCA before hdbscan, in a full recluster of n faces: easy data, then hard data
    (lookalike pairs at centre cosine 0.6, same-person cosine down to 0.45)."""
    out = []
    for what, synth in (("easy", Synth(1)), ("hard", Synth(1, lookalike=0.6, low=0.45))):
        lib, who = synth.faceset(n)
        for d in dims:
            p = Params(pca_dims=d)
            sec, (labels, _) = median_time(lambda p=p, lib=lib: recluster(lib, {}, p), 1)
            out.append({"what": f"{what} {n}", "pca_dims": d, "seconds": round(sec, 2),
                        **quality(labels, lib.ids, who)})  # fmt: skip
    return out


def bench_naive(pools: list[int], dims: list[int]) -> list[dict]:
    """hdbscan over a whole pool of noise-plus-batch faces, as if every batch did that."""
    out = []
    for n in pools:
        synth = Synth(2)
        faces, who = synth.faceset(n)
        for d in dims:
            sec, labels = median_time(
                lambda d=d, faces=faces: find_groups(faces, Params(pca_dims=d)), 1
            )
            lab = {f: int(x) for f, x in zip(faces.ids, labels, strict=True) if x >= 0}
            out.append({"pool": n, "pca_dims": d, "seconds": round(sec, 2),
                        **quality(lab, faces.ids, who)})  # fmt: skip
    return out


def bench_phase(n: int, batches: int = 3) -> dict:
    """The real phase with SQLite and an embedded ChromaDB holding n faces."""
    from daemon.ledger.ledger import Ledger
    from daemon.people.recluster import recluster_all
    from daemon.phases.base import BatchInfo, PhaseContext
    from daemon.phases.clustering import ClusteringPhase
    from daemon.store.chroma import Store

    out: dict[str, Any] = {"library": n}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.model_validate({"data_dir": tmp})
        ledger, store = Ledger(cfg.ledger_path), Store(cfg)
        store.open_faces("synthetic-128", DIM)
        synth = Synth(3)

        def add(faces: FaceSet, clustered: int) -> int:
            bid = ledger.claims.reserve_batch(f"b{synth.n}", "folder", ["x"])
            metas = [{"image_id": p, "batch_id": bid, "person": "", "cluster": "",
                      "suggested_person": ""} for p in faces.photos]  # fmt: skip
            store.upsert_faces(faces.ids, faces.vectors, metas)
            with ledger.transaction() as conn:
                conn.executemany(
                    "INSERT INTO faces(face_id, sha256, image_id, batch_id, det_score, area,"
                    " clustered, created_at) VALUES (?,?,0,?,0.9,10000,?,?)",
                    [
                        (f, p, bid, clustered, time.time())
                        for f, p in zip(faces.ids, faces.photos, strict=True)
                    ],
                )
            return bid

        t = time.perf_counter()
        lib, _ = synth.faceset(n)
        for start in range(0, n, 5000):
            add(lib.take(np.arange(start, min(n, start + 5000))), clustered=1)
        out["load_seconds"] = round(time.perf_counter() - t, 1)
        result = recluster_all(ledger, store, cfg)
        out["recluster_all_seconds"] = result.seconds
        out["clusters"] = result.clusters_after
        phase = ClusteringPhase()
        phase.setup(PhaseContext(cfg, store, ledger, None))
        runs = []
        for _ in range(batches):
            faces, _ = synth.faceset(130, photos=100)
            info = BatchInfo(add(faces, clustered=0), "bench", Path(tmp))
            t = time.perf_counter()
            phase.run(info, lambda n: None, lambda s: None)
            runs.append(round(time.perf_counter() - t, 3))
        out["batch_cold_seconds"] = runs[0]
        out["batch_warm_seconds"] = statistics.median(runs[1:])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller libraries, fewer repeats")
    ap.add_argument("--skip-naive", action="store_true", help="skip whole-pool hdbscan runs")
    ap.add_argument(
        "--chroma",
        default="10000",
        help="library sizes for the real phase with Chroma, comma-separated (100000 takes minutes)",
    )
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sizes = [1_000, 10_000, 30_000] if args.quick else [1_000, 10_000, 30_000, 100_000]
    results: dict[str, Any] = {"dim": DIM, "identities": IDENTITIES, "pool_max": POOL_MAX}

    print("engine only (no SQLite, no Chroma): one 100-photo batch into a library")
    results["incremental"], results["full_recluster"] = bench_engine(
        sizes, {1_000: 5, 10_000: 5, 30_000: 3, 100_000: 3}
    )
    heads = ("library", 8), ("clusters", 8), ("pool", 6), ("faces", 5), ("seconds", 8)
    print(" ".join(f"{h:>{w}}" for h, w in heads), f"{'attached':>8} {'new':>4}")
    for r in results["incremental"]:
        print(f"{r['library']:>8} {r['clusters']:>8} {r['pool']:>6} {r['batch_faces']:>5}"
              f" {r['seconds']:>8.3f} {r['attached']:>8} {r['new_clusters']:>4}")  # fmt: skip
    f = results["full_recluster"]
    print(
        f"full recluster of {f['faces']} faces: {f['seconds']:.1f}s, ARI {f['ari']},"
        f" purity {f['purity']}, noise {f['noise_share']:.1%}, {f['clusters']} clusters"
    )

    print("\nreal phase: SQLite ledger + embedded ChromaDB")
    results["phase_chroma"] = []
    for n in (int(x) for x in args.chroma.split(",") if x):
        results["phase_chroma"].append(bench_phase(n))
        print(json.dumps(results["phase_chroma"][-1]))

    print("\nPCA before hdbscan (full recluster, engine only)")
    results["pca"] = bench_pca(30_000 if args.quick else 100_000, [0, 16, 32])
    for r in results["pca"]:
        print(f"{r['what']:>16} pca {r['pca_dims']:>2}: {r['seconds']:6.2f}s ARI {r['ari']}"
              f" purity {r['purity']} noise {r['noise_share']:.1%}")  # fmt: skip
    if not args.skip_naive:
        print("\nnaive: hdbscan over the whole pool for every batch")
        results["naive"] = bench_naive([5_000] if args.quick else [5_000, 20_000], [0, 16, 32])
        for r in results["naive"]:
            print(f"pool {r['pool']:>6} pca {r['pca_dims']:>2}: {r['seconds']:7.2f}s"
                  f" ARI {r['ari']} noise {r['noise_share']:.1%}")  # fmt: skip
    out = ROOT / "bench" / "results" / "clustering.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
