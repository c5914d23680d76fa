"""The face library as the clustering maths sees it: ledger rows plus store vectors.

Shared by the clustering phase, `people` operations and the full recluster:
fetching vectors, turning ledger rows into `engine` objects and back, and
mirroring the ledger's decisions into Chroma's metadata (faces, and through
`daemon.people.photos` the people of each photo). The ledger is
authoritative; the mirror is what a search filtered by person reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from daemon.ledger.faces import FaceRow
from daemon.ledger.ledger import Ledger
from daemon.people.engine import FaceSet, Group, normalise, quality
from daemon.people.photos import mirror_photos, photo_of

CHUNK = 5000  # ids per store call


def fetch_vectors(store: Any, ids: list[str]) -> dict[str, np.ndarray]:
    """{face_id: vector} for the ids the store has."""
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), CHUNK):
        rows = store.get_faces(ids=ids[start : start + CHUNK])
        out.update(zip(rows.ids, normalise(rows.embeddings), strict=True))
    return out


def face_set(rows: list[FaceRow], vectors: dict[str, np.ndarray], dim: int) -> FaceSet:
    """The rows that have a vector, as a FaceSet."""
    rows = [r for r in rows if r.face_id in vectors]
    if not rows:
        return FaceSet.empty(dim)
    return FaceSet(
        [r.face_id for r in rows],
        [r.sha256 for r in rows],
        np.asarray([quality(r.det_score, r.area) for r in rows]),
        np.stack([vectors[r.face_id] for r in rows]),
    )


def unnamed_clusters(ledger: Ledger) -> list[Group]:
    """Every unnamed cluster, with its representative's rank."""
    return [
        Group(
            c.cluster_id,
            c.centroid,
            c.size,
            c.representative,
            quality(c.rep_det_score, c.rep_area or 0.0) if c.rep_det_score is not None else -1.0,
        )
        for c in ledger.clusters.unnamed_centroids()
    ]


def write_clusters(ledger: Ledger, groups: dict[int, Group], now: float) -> dict[int, int]:
    """Insert new groups (negative keys, -1 first) and update the others; {key: cluster_id}."""
    ids: dict[int, int] = {}
    for key in sorted(groups, key=lambda k: (k < 0, -k if k < 0 else k)):
        g = groups[key]
        if key < 0:
            ids[key] = ledger.clusters.insert(g.mean, g.size, g.rep, now)
        else:
            ledger.clusters.update(key, g.mean, g.size, g.rep, now)
            ids[key] = key
    return ids


def mirror_faces(ledger: Ledger, store: Any, face_ids: Iterable[str]) -> int:
    """Copy the ledger's person / cluster / suggestion of these faces into Chroma,
    and the people of their photos into the images' metadata (`daemon.people.photos`)."""
    ids = sorted(set(face_ids))
    done = 0
    for start in range(0, len(ids), CHUNK):
        rows = ledger.faces.labels(ids[start : start + CHUNK])
        # Chroma ignores an update naming a record it does not hold.
        store.update_faces(
            [r.face_id for r in rows],
            [
                {
                    "person": r.person or "",
                    "cluster": "" if r.cluster_id is None else str(r.cluster_id),
                    "suggested_person": r.suggested_person or "",
                }
                for r in rows
            ],
        )
        done += len(rows)
    mirror_photos(ledger, store, {photo_of(f) for f in ids})
    return done
