"""Phase 3: group a batch's faces into people and clusters (the ledger side).

The numbers are `daemon.people.engine`'s; this module reads the ledger and
the store through `daemon.people.library`, and writes the outcome. The ledger
is authoritative: all of a batch's assignments land in one transaction, which
also marks its faces clustered; Chroma's `person` / `cluster` /
`suggested_person` metadata is mirrored from the ledger afterwards. A re-run
finds the batch already clustered and only repairs the mirror, so a crash
between the commit and the mirror heals itself and no cluster is ever created
twice.

A face the user took from a person (`face_rejections`), or a copy of it, is
never matched to that person again (`daemon.people.rejections`).

Cost per batch: the batch's vectors, the unnamed clusters' centroids (one
small row each) and the pool of the `pool_max` most recent noise faces, whose
vectors stay in memory between batches. Noise older than that leaves the pool
and is only looked at again by `daemon.people.recluster`, which runs when someone asks
for it (`imgtrain people recluster`), never by itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from daemon.ledger.faces import Assignment
from daemon.ledger.ledger import Ledger
from daemon.people.engine import (
    FaceSet,
    Group,
    Params,
    Plan,
    attach,
    group_unknown,
    match_people,
    quality,
)
from daemon.people.library import (
    face_set,
    fetch_vectors,
    mirror_faces,
    unnamed_clusters,
    write_clusters,
)
from daemon.people.photos import backfill
from daemon.people.pool import PoolCache
from daemon.people.rejections import Rejections
from daemon.phases.base import BatchInfo, PhaseContext, Report
from daemon.vocab import PhaseName

log = logging.getLogger(__name__)


class ClusteringPhase:
    name = PhaseName.CLUSTERING
    STEPS = 5

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self.store: Any = None
        self.params = Params()
        self.rejection_threshold = 1.0
        self.pool: PoolCache | None = None

    def setup(self, ctx: PhaseContext) -> None:
        self.ledger, self.store = ctx.ledger, ctx.store
        self.params = Params.from_config(ctx.config.clustering)
        self.rejection_threshold = ctx.config.clustering.rejection_threshold
        backfill(ctx.ledger, ctx.store)  # once per library: image metadata older versions lacked
        # hdbscan and scikit-learn take about a second to import: paid here, while the
        # models load, and not inside the first batch that forms new groups, whose
        # clustering the ETA expects (and learns) to take milliseconds.
        import hdbscan  # noqa: F401
        import sklearn.decomposition  # noqa: F401

        if self.pool is None or self.pool.pool_max != ctx.config.clustering.pool_max:
            self.pool = PoolCache(ctx.config.clustering.pool_max)

    def total_steps(self, batch: BatchInfo) -> int:
        return self.STEPS

    def cleanup(self) -> None:
        """The pool's vectors stay cached for the next batch."""

    @property
    def _ledger(self) -> Ledger:
        assert self.ledger is not None, "setup() first"
        return self.ledger

    # -- running -------------------------------------------------------------
    def run(self, batch: BatchInfo, report: Report, describe: Callable[[str], None]) -> None:
        ledger = self._ledger
        rows = ledger.faces.unclustered(batch.batch_id)
        describe(f"loading {len(rows)} new faces")
        vectors = fetch_vectors(self.store, [r.face_id for r in rows])
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        new = face_set(rows, vectors, dim)
        if len(new) < len(rows):
            log.warning(
                "batch %d: %d faces have no vector in the store; they stay unclustered noise",
                batch.batch_id,
                len(rows) - len(new),
            )
        if len(new) and len(self._pool(dim)) >= self.pool_max:
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
        # One transaction: a concurrent CLI change (naming, merging) cannot interleave.
        with ledger.transaction():
            changed = self._decide(batch, new, [r.face_id for r in rows], report, describe)
        mirror_faces(ledger, self.store, changed)
        report(1)

    @property
    def pool_max(self) -> int:
        return self.pool.pool_max if self.pool is not None else 0

    def _note_overflow(self) -> None:
        noise = self._ledger.faces.count_pool()
        if noise > self.pool_max:
            log.info(
                "%d unknown faces are older than the pool (clustering.pool_max=%d) and wait"
                " for a full recluster (imgtrain people recluster)",
                noise - self.pool_max,
                self.pool_max,
            )

    def _pool(self, dim: int) -> FaceSet:
        assert self.pool is not None
        rows = self._ledger.faces.pool(self.pool.pool_max)
        entries = [(r.face_id, r.sha256, quality(r.det_score, r.area)) for r in rows]
        return self.pool.sync(entries, lambda ids: fetch_vectors(self.store, ids), dim)

    def _decide(
        self,
        batch: BatchInfo,
        new: FaceSet,
        all_ids: list[str],
        report: Report,
        describe: Callable[[str], None],
    ) -> list[str]:
        """Steps 2-5, inside the caller's transaction."""
        ledger = self._ledger
        params, plan = self.params, Plan()
        pool = self._pool(new.vectors.shape[1]) if len(new) else FaceSet.empty(0)
        people = [Group(p.person_id, p.vector, p.faces) for p in ledger.people.prototypes()]
        clusters = unnamed_clusters(ledger)
        if len(new):
            # Prototypes and centroids of another face model (another dim) cannot match.
            dim = new.vectors.shape[1]
            people = [g for g in people if g.mean.shape[0] == dim]
            clusters = [g for g in clusters if g.mean.shape[0] == dim]
        by_person = {g.key: g for g in people}
        by_cluster = {g.key: g for g in clusters}
        for r in ledger.faces.occupancy([*new.photos, *pool.photos]):
            if r.person_id in by_person:
                by_person[r.person_id].photos.add(r.sha256)
            if r.cluster_id in by_cluster:
                by_cluster[r.cluster_id].photos.add(r.sha256)

        describe(f"matching {len(new)} faces to {len(people)} named people")
        rejections = Rejections.load(ledger, self.store, self.rejection_threshold)
        banned = rejections.banned(new) if rejections else None
        rest = match_people(new, people, params, plan, banned)
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
        return self._write(batch, new, all_ids, plan)

    def _write(self, batch: BatchInfo, new: FaceSet, all_ids: list[str], plan: Plan) -> list[str]:
        ledger = self._ledger
        ids = write_clusters(ledger, plan.clusters, time.time())
        for key, g in plan.people.items():
            ledger.people.set_prototype(key, g.mean)
        batch_ids = set(new.ids)
        decisions = []
        for fid in all_ids:
            key = plan.cluster.get(fid)
            sugg = plan.suggestion.get(fid)
            decisions.append(
                Assignment(
                    fid,
                    person_id=plan.person.get(fid),
                    cluster_id=None if key is None else ids[key],
                    suggested_person_id=sugg[0] if sugg else None,
                    suggestion_score=sugg[1] if sugg else None,
                )
            )
        ledger.faces.assign(decisions)
        pool_moves = {f: ids[k] for f, k in plan.cluster.items() if f not in batch_ids}
        ledger.faces.join_if_unplaced(pool_moves)
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
        return [*all_ids, *pool_moves]

    def _repair_mirror(self, batch_id: int) -> None:
        """Re-mirror what this batch's clustering may have touched (after a crash)."""
        mirror_faces(self._ledger, self.store, self._ledger.faces.touched_by_batch(batch_id))
