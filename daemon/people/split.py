"""Splitting a cluster that mixed people: `imgtrain people split CLUSTER [FACE ...]`.

Without faces named, the cluster's faces are cut in two where they are least
alike: the top split of an average-linkage hierarchy on cosine distance (a
stricter grouping than the one that joined them, which only needed links at
`attach_threshold`). With two or more faces named (one per person), every face
goes to the named face it is most similar to.

The larger part keeps the cluster's id, and its name when it has one (on a tie,
the part holding the first named face, else the cluster's representative);
every other part becomes a new unnamed cluster. Faces that leave a named
cluster leave its person too and are rejected for them
(`daemon.people.rejections`), so no later batch gives them back. A split of an
unnamed cluster is not remembered: a full recluster regroups unnamed faces
from scratch and may join the parts again; name a part to keep it apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.errors import InsufficientData, InvalidState, NotFound
from daemon.ledger.ledger import Ledger
from daemon.people.engine import FaceSet, Group, normalise
from daemon.people.library import face_set, fetch_vectors, mirror_faces
from daemon.people.operations import refresh_cluster, refresh_prototype


@dataclass(frozen=True)
class Part:
    cluster_id: int
    faces: int
    representative: str | None


@dataclass(frozen=True)
class SplitResult:
    cluster_id: int  # the cluster split; its id stays with parts[0]
    person: str | None  # its name, kept by parts[0]
    parts: list[Part]  # the larger part first
    rejected: int  # faces taken from the person (moved out of a named cluster)


def two_way(vectors: np.ndarray) -> np.ndarray:
    """Labels 0/1: the top split of an average-linkage hierarchy on cosine distance."""
    from scipy.cluster.hierarchy import fcluster, linkage

    z = linkage(normalise(vectors).astype(np.float64), method="average", metric="cosine")
    return fcluster(z, 2, criterion="maxclust") - 1


def by_seeds(faces: FaceSet, seeds: list[str]) -> np.ndarray:
    """Labels 0..len(seeds)-1: the most similar seed of each face (a seed keeps its own)."""
    index = {f: i for i, f in enumerate(faces.ids)}
    centres = faces.vectors[[index[s] for s in seeds]]
    labels = np.argmax(faces.vectors @ centres.T, axis=1)
    for n, s in enumerate(seeds):
        labels[index[s]] = n
    return labels


def split_cluster(
    ledger: Ledger, store: Any, cluster_id: int, seeds: list[str] | None = None
) -> SplitResult:
    """Split a cluster in two (or by `seeds`, face ids in it); see the module doc."""
    seeds = list(dict.fromkeys(seeds or []))
    with ledger.transaction():
        cluster = ledger.clusters.get(cluster_id)
        if cluster is None:
            raise NotFound(f"there is no cluster {cluster_id}")
        rows = ledger.faces.of_cluster(cluster_id)
        vectors = fetch_vectors(store, [r.face_id for r in rows])
        dim = next(iter(vectors.values())).shape[0] if vectors else 0
        faces = face_set(sorted(rows, key=lambda r: r.face_id), vectors, dim)
        if len(faces) < 2:
            raise InsufficientData(
                f"cluster {cluster_id} has {len(faces)} face(s); a split needs two",
                hint="Take a single face away with `imgtrain people reject FACE`.",
            )
        stray = [s for s in seeds if s not in faces.ids]
        if stray:
            raise InvalidState(
                f"face {stray[0]} is not in cluster {cluster_id}",
                hint=f"`imgtrain people show {cluster_id}` lists its faces.",
            )
        if len(seeds) == 1:
            raise InvalidState(
                "name at least two faces, one of each person, or none",
                hint="Without faces the cluster is cut in two where its faces differ most.",
            )
        labels = by_seeds(faces, seeds) if seeds else two_way(faces.vectors)
        first = seeds[0] if seeds else cluster.representative
        parts = [np.flatnonzero(labels == k) for k in range(int(labels.max()) + 1)]
        parts = [p for p in parts if len(p)]
        parts.sort(key=lambda p: (-len(p), first not in {faces.ids[i] for i in p}))
        now = time.time()
        moves: dict[str, int] = {}
        made: list[int] = []
        for part in parts[1:]:
            group = Group(0, np.zeros(faces.vectors.shape[1], np.float32), 0)
            group.add(faces, part.tolist())
            cid = ledger.clusters.insert(group.mean, group.size, group.rep, now)
            made.append(cid)
            moves.update({faces.ids[i]: cid for i in part})
        if cluster.person_id is not None:
            ledger.faces.to_pool(list(moves))
            for face_id in moves:
                ledger.people.reject(face_id, cluster.person_id)
        ledger.faces.set_clusters(moves)
        refresh_cluster(ledger, store, cluster_id)
        if cluster.person_id is not None:
            refresh_prototype(ledger, store, cluster.person_id)
        result = [ledger.clusters.get(c) for c in [cluster_id, *made]]
    mirror_faces(ledger, store, moves)
    return SplitResult(
        cluster_id,
        cluster.person,
        [Part(c.cluster_id, c.faces, c.representative) for c in result if c is not None],
        len(moves) if cluster.person_id is not None else 0,
    )
