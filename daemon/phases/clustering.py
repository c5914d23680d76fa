"""Phase 3: group a batch's faces into people and clusters (the ledger side).

The numbers are `daemon.facecluster`'s; this module reads the ledger and the
store, and writes the outcome. The ledger is authoritative: all of a batch's
assignments land in one transaction, which also marks its faces clustered;
Chroma's `person` / `cluster` / `suggested_person` metadata is mirrored from
the ledger afterwards. A re-run finds the batch already clustered and only
repairs the mirror, so a crash between the commit and the mirror heals itself
and no cluster is ever created twice.

Cost per batch: the batch's vectors, the unnamed clusters' centroids (one
small row each) and the pool of the `pool_max` most recent noise faces, whose
vectors stay in memory between batches. Noise older than that leaves the pool
and is only looked at again by `recluster_all`, which runs when someone asks
for it (`imgtrain people recluster`), never by itself.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.errors import InvalidState
from daemon.people.engine import (
    FaceSet,
    Group,
    Params,
    Plan,
    PoolCache,
    attach,
    group_unknown,
    match_people,
    normalise,
    quality,
    recluster,
)
from daemon.phases.base import BatchInfo, PhaseContext, Report
from daemon.vocab import PhaseName

log = logging.getLogger(__name__)

CHUNK = 5000  # ids per SQL statement / store call


def _json(values: Iterable[Any]) -> str:
    return json.dumps(list(values))


def blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def unblob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).copy()


def fetch_vectors(store: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """{face_id: vector} for the ids the store has."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), CHUNK):
        rows = store.get_faces(ids=ids[start : start + CHUNK])
        out.update(zip(rows.ids, normalise(rows.embeddings), strict=True))
    return out


def face_set(rows: list[sqlite3.Row], vectors: dict[str, np.ndarray], dim: int) -> FaceSet:
    rows = [r for r in rows if r["face_id"] in vectors]
    if not rows:
        return FaceSet.empty(dim)
    return FaceSet(
        [r["face_id"] for r in rows],
        [r["sha256"] for r in rows],
        np.asarray([quality(r["det_score"], r["area"]) for r in rows]),
        np.stack([vectors[r["face_id"]] for r in rows]),
    )


def occupancy(conn: sqlite3.Connection, photos: Iterable[str]) -> list[sqlite3.Row]:
    """Faces already placed (person or cluster) in these photos.

    Face ids are "<sha256>:<n>", so a photo's faces are a primary-key range
    and this costs one index probe per photo, whatever the library's size.
    """
    photos = sorted(set(photos))
    out: list[sqlite3.Row] = []
    for start in range(0, len(photos), CHUNK):
        out += conn.execute(
            "SELECT f.sha256, f.cluster_id, f.person_id FROM json_each(?) j"
            " JOIN faces f ON f.face_id > j.value || ':' AND f.face_id < j.value || ';'"
            " WHERE f.cluster_id IS NOT NULL OR f.person_id IS NOT NULL",
            (_json(photos[start : start + CHUNK]),),
        ).fetchall()
    return out


def mirror_faces(ledger: Any, store: Any, face_ids: Iterable[str]) -> int:
    """Copy the ledger's person / cluster / suggestion of these faces into Chroma."""
    ids = sorted(set(face_ids))
    done = 0
    for start in range(0, len(ids), CHUNK):
        rows = ledger.query(
            "SELECT f.face_id, f.cluster_id, p.name AS person, s.name AS suggested"
            " FROM json_each(?) j JOIN faces f ON f.face_id = j.value"
            " LEFT JOIN people p ON p.person_id = f.person_id"
            " LEFT JOIN people s ON s.person_id = f.suggested_person_id",
            (_json(ids[start : start + CHUNK]),),
        )
        # Chroma ignores an update naming a record it does not hold.
        store.update_faces(
            [r["face_id"] for r in rows],
            [
                {
                    "person": r["person"] or "",
                    "cluster": "" if r["cluster_id"] is None else str(r["cluster_id"]),
                    "suggested_person": r["suggested"] or "",
                }
                for r in rows
            ],
        )
        done += len(rows)
    return done


def load_clusters(conn: sqlite3.Connection) -> list[Group]:
    """Every unnamed cluster, with its representative's rank."""
    return [
        Group(
            r["cluster_id"],
            unblob(r["centroid"]),
            r["size"],
            r["representative"],
            quality(r["det_score"], r["area"]) if r["det_score"] is not None else -1.0,
        )
        for r in conn.execute(
            "SELECT c.cluster_id, c.centroid, c.size, c.representative, f.det_score, f.area"
            " FROM clusters c LEFT JOIN faces f ON f.face_id = c.representative"
            " WHERE c.person_id IS NULL ORDER BY c.cluster_id"
        )
    ]


def write_clusters(
    conn: sqlite3.Connection, groups: dict[int, Group], now: float
) -> dict[int, int]:
    """Insert new groups (negative keys, -1 first) and update the others; {key: cluster_id}."""
    ids: dict[int, int] = {}
    for key in sorted(groups, key=lambda k: (k < 0, -k if k < 0 else k)):
        g = groups[key]
        if key < 0:
            cur = conn.execute(
                "INSERT INTO clusters(centroid, size, representative, created_at, updated_at)"
                " VALUES (?,?,?,?,?)",
                (blob(g.mean), g.size, g.rep, now, now),
            )
            ids[key] = int(cur.lastrowid)
        else:
            conn.execute(
                "UPDATE clusters SET centroid=?, size=?, representative=?, updated_at=?"
                " WHERE cluster_id=?",
                (blob(g.mean), g.size, g.rep, now, key),
            )
            ids[key] = key
    return ids


class ClusteringPhase:
    name = PhaseName.CLUSTERING
    STEPS = 5

    def __init__(self) -> None:
        self.ledger: Any = None
        self.store: Any = None
        self.params = Params()
        self.pool: PoolCache | None = None

    def setup(self, ctx: PhaseContext) -> None:
        self.ledger, self.store = ctx.ledger, ctx.store
        self.params = Params.from_config(ctx.config.clustering)
        if self.pool is None or self.pool.pool_max != ctx.config.clustering.pool_max:
            self.pool = PoolCache(ctx.config.clustering.pool_max)

    def total_steps(self, batch: BatchInfo) -> int:
        return self.STEPS

    def cleanup(self) -> None:
        """The pool's vectors stay cached for the next batch."""

    # -- running -------------------------------------------------------------
    def run(self, batch: BatchInfo, report: Report, describe: Callable[[str], None]) -> None:
        rows = self.ledger.query(
            "SELECT face_id, sha256, det_score, area FROM faces"
            " WHERE batch_id=? AND clustered=0 ORDER BY face_id",
            (batch.batch_id,),
        )
        describe(f"loading {len(rows)} new faces")
        vectors = fetch_vectors(self.store, [r["face_id"] for r in rows])
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        new = face_set(rows, vectors, dim)
        if len(new) < len(rows):
            log.warning(
                "batch %d: %d faces have no vector in the store; they stay unclustered noise",
                batch.batch_id,
                len(rows) - len(new),
            )
        if len(new) and len(self._pool(self.ledger.conn, dim)) >= self.pool_max:
            self._note_overflow()  # (the call also fetched the pool's new vectors before locking)
        report(1)
        if not rows:
            for text in ("matching: no new faces", "attaching: no new faces", "grouping: none"):
                describe(text)
                report(1)
            describe("checking the face index")
            self._repair_mirror(batch.batch_id)
            report(1)
            return
        with self.ledger.transaction() as conn:
            changed = self._decide(conn, batch, new, [r["face_id"] for r in rows], report, describe)
        mirror_faces(self.ledger, self.store, changed)
        report(1)

    @property
    def pool_max(self) -> int:
        return self.pool.pool_max if self.pool is not None else 0

    def _note_overflow(self) -> None:
        noise = self.ledger.query(
            "SELECT COUNT(*) n FROM faces WHERE clustered=1 AND cluster_id IS NULL"
            " AND person_id IS NULL"
        )[0]["n"]
        if noise > self.pool_max:
            log.info(
                "%d unknown faces are older than the pool (clustering.pool_max=%d) and wait"
                " for a full recluster (imgtrain people recluster)",
                noise - self.pool_max,
                self.pool_max,
            )

    def _pool(self, conn: sqlite3.Connection, dim: int) -> FaceSet:
        assert self.pool is not None
        rows = conn.execute(
            "SELECT face_id, sha256, det_score, area FROM faces"
            " WHERE clustered=1 AND cluster_id IS NULL AND person_id IS NULL"
            " ORDER BY created_at DESC, face_id DESC LIMIT ?",
            (self.pool.pool_max,),
        ).fetchall()
        entries = [(r["face_id"], r["sha256"], quality(r["det_score"], r["area"])) for r in rows]
        return self.pool.sync(entries, lambda ids: fetch_vectors(self.store, ids), dim)

    def _decide(
        self,
        conn: sqlite3.Connection,
        batch: BatchInfo,
        new: FaceSet,
        all_ids: list[str],
        report: Report,
        describe: Callable[[str], None],
    ) -> list[str]:
        """Steps 2-5 inside one transaction, so a concurrent CLI change cannot interleave."""
        params, plan = self.params, Plan()
        pool = self._pool(conn, new.vectors.shape[1]) if len(new) else FaceSet.empty(0)
        people = [
            Group(r["person_id"], unblob(r["prototype"]), r["n"])
            for r in conn.execute(
                "SELECT p.person_id, p.prototype, COUNT(f.face_id) n FROM people p"
                " LEFT JOIN faces f ON f.person_id = p.person_id"
                " WHERE p.prototype IS NOT NULL GROUP BY p.person_id ORDER BY p.person_id"
            )
        ]
        clusters = load_clusters(conn)
        if len(new):
            # Prototypes and centroids of another face model (another dim) cannot match.
            dim = new.vectors.shape[1]
            people = [g for g in people if g.mean.shape[0] == dim]
            clusters = [g for g in clusters if g.mean.shape[0] == dim]
        by_person = {g.key: g for g in people}
        by_cluster = {g.key: g for g in clusters}
        for r in occupancy(conn, [*new.photos, *pool.photos]):
            if r["person_id"] in by_person:
                by_person[r["person_id"]].photos.add(r["sha256"])
            if r["cluster_id"] in by_cluster:
                by_cluster[r["cluster_id"]].photos.add(r["sha256"])

        describe(f"matching {len(new)} faces to {len(people)} named people")
        rest = match_people(new, people, params, plan)
        report(1)
        describe(f"attaching {len(rest)} faces to {len(clusters)} clusters")
        rest = attach(new, rest, clusters, params, plan)
        report(1)
        describe(f"clustering {len(rest)} unknown faces with the pool of {len(pool)}")
        if rest:
            group_unknown(new, rest, pool, clusters, params, plan)
        report(1)
        describe(
            f"saving: {len(plan.person)} assigned, {len(plan.suggestion)} suggested,"
            f" {len(plan.cluster)} clustered"
        )
        return self._write(conn, batch, new, all_ids, plan)

    def _write(
        self,
        conn: sqlite3.Connection,
        batch: BatchInfo,
        new: FaceSet,
        all_ids: list[str],
        plan: Plan,
    ) -> list[str]:
        now = time.time()
        ids = write_clusters(conn, plan.clusters, now)
        for key, g in plan.people.items():
            conn.execute("UPDATE people SET prototype=? WHERE person_id=?", (blob(g.mean), key))
        batch_ids = set(new.ids)
        rows = []
        for fid in all_ids:
            key = plan.cluster.get(fid)
            sugg = plan.suggestion.get(fid)
            rows.append(
                (
                    plan.person.get(fid),
                    None if key is None else ids[key],
                    sugg[0] if sugg else None,
                    sugg[1] if sugg else None,
                    fid,
                )
            )
        conn.executemany(
            "UPDATE faces SET person_id=?, cluster_id=?, suggested_person_id=?,"
            " suggestion_score=?, clustered=1 WHERE face_id=?",
            rows,
        )
        pool_moves = [(ids[k], f) for f, k in plan.cluster.items() if f not in batch_ids]
        conn.executemany(
            "UPDATE faces SET cluster_id=? WHERE face_id=? AND cluster_id IS NULL"
            " AND person_id IS NULL",
            pool_moves,
        )
        log.info(
            "batch %d: %d faces, %d to people, %d suggested, %d in clusters (%d new), %d pool"
            " faces joined clusters",
            batch.batch_id,
            len(all_ids),
            len(plan.person),
            len(plan.suggestion),
            sum(1 for f in plan.cluster if f in batch_ids),
            sum(1 for k in plan.clusters if k < 0),
            len(pool_moves),
        )
        return [*all_ids, *(f for _, f in pool_moves)]

    def _repair_mirror(self, batch_id: int) -> None:
        """Re-mirror what this batch's clustering may have touched (after a crash)."""
        rows = self.ledger.query(
            "SELECT face_id FROM faces WHERE batch_id=?1 UNION"
            " SELECT f.face_id FROM faces f JOIN clusters c USING(cluster_id)"
            " WHERE c.updated_at >= (SELECT MIN(created_at) FROM faces WHERE batch_id=?1)",
            (batch_id,),
        )
        mirror_faces(self.ledger, self.store, [r["face_id"] for r in rows])


@dataclass(frozen=True)
class ReclusterResult:
    faces: int  # unnamed faces considered
    clusters_before: int
    clusters_after: int
    kept: int  # cluster ids that survived (by largest overlap)
    created: int
    removed: int
    noise: int
    seconds: float


def _fingerprint(conn: sqlite3.Connection) -> tuple[Any, ...]:
    faces = conn.execute(
        "SELECT COUNT(*), TOTAL(COALESCE(cluster_id, 0)), TOTAL(COALESCE(person_id, 0))"
        " FROM faces WHERE clustered=1"
    ).fetchone()
    clusters = conn.execute(
        "SELECT COUNT(*), TOTAL(size), MAX(updated_at), TOTAL(COALESCE(person_id, 0)) FROM clusters"
    ).fetchone()
    return (*tuple(faces), *tuple(clusters))


def recluster_all(ledger: Any, store: Any, config: Any, attempts: int = 3) -> ReclusterResult:
    """Rebuild every unnamed cluster from all unnamed faces; named people are untouched.

    Ids stay where a new group overlaps an old cluster most. The work happens
    outside the write lock; if the daemon changed the library meanwhile, it is
    redone (up to `attempts` times).
    """
    params = Params.from_config(config.clustering)
    t0 = time.monotonic()
    for _ in range(attempts):
        mark = _fingerprint(ledger.conn)
        rows = ledger.query(
            "SELECT face_id, sha256, det_score, area, cluster_id FROM faces"
            " WHERE clustered=1 AND person_id IS NULL ORDER BY created_at, face_id"
        )
        vectors = fetch_vectors(store, [r["face_id"] for r in rows])
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        faces = face_set(rows, vectors, dim)
        old = {r["face_id"]: r["cluster_id"] for r in rows if r["cluster_id"] is not None}
        labels, groups = recluster(faces, old, params)
        with ledger.transaction() as conn:
            if _fingerprint(conn) != mark:
                continue
            before = [
                r[0]
                for r in conn.execute("SELECT cluster_id FROM clusters WHERE person_id IS NULL")
            ]
            ids = write_clusters(conn, groups, time.time())
            moves = [
                (
                    None if labels.get(r["face_id"]) is None else ids[labels[r["face_id"]]],
                    r["face_id"],
                )
                for r in rows
            ]
            moves = [(c, f) for c, f in moves if c != old.get(f)]
            conn.executemany("UPDATE faces SET cluster_id=? WHERE face_id=?", moves)
            gone = [c for c in before if c not in ids.values()]
            conn.executemany(
                "DELETE FROM clusters WHERE cluster_id=? AND person_id IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM faces WHERE faces.cluster_id = clusters.cluster_id)",
                [(c,) for c in gone],
            )
        mirror_faces(ledger, store, [f for _, f in moves])
        return ReclusterResult(
            faces=len(faces),
            clusters_before=len(before),
            clusters_after=len(groups),
            kept=sum(1 for k in groups if k > 0),
            created=sum(1 for k in groups if k < 0),
            removed=len(gone),
            noise=len(faces) - len(labels),
            seconds=round(time.monotonic() - t0, 3),
        )
    raise InvalidState(
        f"the library kept changing while reclustering ({attempts} attempts)",
        hint="Pause the daemon (imgtrain pause), run `imgtrain people recluster` again, then"
        " resume it (imgtrain resume).",
    )
