"""The full recluster (`imgtrain people recluster`): every unnamed face grouped afresh.

The clustering phase only looks at a batch's faces and a bounded pool of
recent noise; noise older than the pool waits for this, which runs only when
someone asks for it, never by itself. Named people are untouched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from daemon.errors import InvalidState
from daemon.ledger.ledger import Ledger
from daemon.people.engine import Params
from daemon.people.library import face_set, fetch_vectors, mirror_faces, write_clusters
from daemon.people.rebuild import recluster


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


def _fingerprint(ledger: Ledger) -> tuple[Any, ...]:
    return (*ledger.faces.fingerprint(), *ledger.clusters.fingerprint())


def recluster_all(ledger: Ledger, store: Any, config: Any, attempts: int = 3) -> ReclusterResult:
    """Rebuild every unnamed cluster from all unnamed faces; named people are untouched.

    Ids stay where a new group overlaps an old cluster most. The work happens
    outside the write lock; if the daemon changed the library meanwhile, it is
    redone (up to `attempts` times).
    """
    params = Params.from_config(config.clustering)
    t0 = time.monotonic()
    for _ in range(attempts):
        mark = _fingerprint(ledger)
        rows = ledger.faces.unnamed()
        vectors = fetch_vectors(store, [r.face_id for r in rows])
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        faces = face_set(rows, vectors, dim)
        old = {r.face_id: r.cluster_id for r in rows if r.cluster_id is not None}
        labels, groups = recluster(faces, old, params)
        with ledger.transaction():
            if _fingerprint(ledger) != mark:
                continue
            before = ledger.clusters.ids(unnamed_only=True)
            ids = write_clusters(ledger, groups, time.time())
            moves = {
                r.face_id: None if labels.get(r.face_id) is None else ids[labels[r.face_id]]
                for r in rows
            }
            moves = {f: c for f, c in moves.items() if c != old.get(f)}
            ledger.faces.set_clusters(moves)
            gone = [c for c in before if c not in ids.values()]
            ledger.clusters.delete_if_empty(gone)
        mirror_faces(ledger, store, moves)
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
