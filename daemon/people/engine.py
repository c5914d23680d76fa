"""The numeric core of face clustering: pure numpy and hdbscan, no ledger, no store.

Vectors are L2-normalised, so a dot product is a cosine similarity and
Euclidean distance orders pairs exactly like cosine (|a-b|^2 = 2 - 2cos).

One batch of new faces goes through `plan_batch`:
1. each face is compared with the named people's prototypes (except those it
   is banned from): from `assign_threshold` it is that person's, from
   `suggest_threshold` a suggestion;
2. the faces left over join an existing unnamed cluster whose centroid is at
   least `attach_threshold` away (cosine), so a cluster that gains faces keeps
   its id and no earlier face ever changes cluster;
3. what is still unknown is clustered with hdbscan together with the pool
   faces in its neighbourhood (earlier noise within `attach_threshold`, two
   hops out). Only that neighbourhood is clustered, never the whole pool, so
   the cost grows with the batch; faces far from every new face cannot form a
   group with them anyway, because a group needs links at `attach_threshold`.

hdbscan never selects the root of its hierarchy, so a neighbourhood holding a
single person would yield nothing: what its excess-of-mass selection leaves as
noise is therefore one more candidate group. Every candidate is then checked
on the original vectors: each member must link (cosine >= attach_threshold)
to `samples` other members, unlinked pieces come apart, one face per photo
stays (the one nearest the centroid), and what has fewer than
`min_cluster_size` faces dissolves back into the pool.

The pool between batches is `daemon.people.pool`; the full rebuild, `daemon.people.rebuild`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from daemon.config import ClusteringConfig

NOISE = -1
NEIGHBOURS_PER_FACE = 32  # pool faces kept per unknown face and hop: bounds a hop's size
RECLUSTER_CHUNK = 2000
DENSE_LINKS = 2048  # up to this many faces, a group's link matrix is a dense array
Banned = list[set[int]] | None  # per face, the people it must not go to (daemon.people.rejections)


@dataclass(frozen=True)
class Params:
    min_cluster_size: int = 3
    min_samples: int | None = None
    assign_threshold: float = 0.5
    suggest_threshold: float = 0.4
    attach_threshold: float = 0.5
    pca_dims: int = 0

    @classmethod
    def from_config(cls, cfg: ClusteringConfig) -> Params:
        return cls(
            cfg.min_cluster_size,
            cfg.min_samples,
            cfg.assign_threshold,
            cfg.suggest_threshold,
            cfg.attach_threshold,
            cfg.pca_dims,
        )

    @property
    def samples(self) -> int:
        # hdbscan counts min_samples neighbours besides the point itself, so the
        # default (= min_cluster_size) would make a person with exactly
        # min_cluster_size faces too sparse to ever form a cluster.
        return self.min_samples or max(1, self.min_cluster_size - 1)


@dataclass
class FaceSet:
    """Faces with their vectors; `photos` is the same-photo key (image sha256)."""

    ids: list[str]
    photos: list[str]
    quality: np.ndarray  # representative ranking: det_score * sqrt(area)
    vectors: np.ndarray  # float32 (n, dim), L2-normalised

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls, dim: int) -> FaceSet:
        return cls([], [], np.zeros(0), np.zeros((0, dim), np.float32))

    def take(self, idx: Iterable[int] | np.ndarray) -> FaceSet:
        idx = np.asarray(list(idx) if not isinstance(idx, np.ndarray) else idx, dtype=np.int64)
        return FaceSet(
            [self.ids[i] for i in idx],
            [self.photos[i] for i in idx],
            self.quality[idx],
            self.vectors[idx],
        )

    @staticmethod
    def concat(sets: list[FaceSet]) -> FaceSet:
        return FaceSet(
            [i for s in sets for i in s.ids],
            [p for s in sets for p in s.photos],
            np.concatenate([s.quality for s in sets]),
            np.concatenate([s.vectors for s in sets]).astype(np.float32, copy=False),
        )


def quality(det_score: float, area: float) -> float:
    """A confident detection of a large face ranks first."""
    return float(det_score) * float(np.sqrt(max(area, 0.0)))


def normalise(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


@dataclass
class Group:
    """A cluster or a named person as the engine sees it."""

    key: int
    mean: np.ndarray  # mean of the members' unit vectors (not normalised)
    size: int
    rep: str | None = None
    rep_quality: float = -1.0
    photos: set[str] = field(default_factory=set)  # photos (among those asked) it holds

    def add(self, faces: FaceSet, idx: list[int]) -> None:
        total = self.mean.astype(np.float64) * self.size + faces.vectors[idx].sum(axis=0)
        self.size += len(idx)
        self.mean = (total / self.size).astype(np.float32)
        for i in idx:
            self.photos.add(faces.photos[i])
            if faces.quality[i] > self.rep_quality:
                self.rep, self.rep_quality = faces.ids[i], float(faces.quality[i])


@dataclass
class Plan:
    person: dict[str, int] = field(default_factory=dict)  # face -> person_id
    suggestion: dict[str, tuple[int, float]] = field(default_factory=dict)  # face -> (id, cos)
    cluster: dict[str, int] = field(default_factory=dict)  # face -> cluster key (<0: new)
    clusters: dict[int, Group] = field(default_factory=dict)  # touched clusters, updated
    people: dict[int, Group] = field(default_factory=dict)  # touched people, updated


def _centroids(groups: list[Group], dim: int) -> np.ndarray:
    if not groups:
        return np.zeros((0, dim), np.float32)
    return normalise(np.stack([g.mean for g in groups]))


def _best_per_photo(
    faces: FaceSet, candidates: list[tuple[int, int, float]], taken: Callable[[str, int], bool]
) -> dict[int, int]:
    """{face index: group key}: per (photo, group) only the most similar face wins."""
    won: dict[int, int] = {}
    seen: set[tuple[str, int]] = set()
    for i, key, _score in sorted(candidates, key=lambda c: (-c[2], c[0])):
        slot = (faces.photos[i], key)
        if slot in seen or taken(*slot):
            continue
        seen.add(slot)
        won[i] = key
    return won


def _by_key(won: dict[int, int]) -> dict[int, list[int]]:
    """{group key: sorted face indices}, keys in ascending order."""
    out: dict[int, list[int]] = {}
    for i, key in sorted(won.items()):
        out.setdefault(key, []).append(i)
    return dict(sorted(out.items()))


def match_people(
    faces: FaceSet, people: list[Group], params: Params, plan: Plan, banned: Banned = None
) -> list[int]:
    """Assign and suggest, never face i to a person in banned[i]; returns those not assigned."""
    if not people or not len(faces):
        return list(range(len(faces)))
    sims = faces.vectors @ _centroids(people, faces.vectors.shape[1]).T
    cols = {g.key: n for n, g in enumerate(people)}
    for i, keys in enumerate(banned or []):
        sims[i, [cols[k] for k in keys if k in cols]] = -np.inf
    best = sims.argmax(axis=1)
    score = sims[np.arange(len(faces)), best]
    by_key = {g.key: g for g in people}
    cands = [
        (i, people[best[i]].key, float(score[i]))
        for i in range(len(faces))
        if score[i] >= params.assign_threshold
    ]
    won = _best_per_photo(faces, cands, lambda photo, key: photo in by_key[key].photos)
    for key, idx in _by_key(won).items():
        by_key[key].add(faces, idx)
        plan.people[key] = by_key[key]
        plan.person.update({faces.ids[i]: key for i in idx})
    for i in range(len(faces)):
        key = people[best[i]].key
        # A photo that already shows this person cannot show them twice: no suggestion.
        if (
            i not in won
            and score[i] >= params.suggest_threshold
            and (faces.photos[i] not in by_key[key].photos)
        ):
            plan.suggestion[faces.ids[i]] = (key, round(float(score[i]), 4))
    return [i for i in range(len(faces)) if i not in won]


def attach(
    faces: FaceSet, idx: list[int], clusters: list[Group], params: Params, plan: Plan
) -> list[int]:
    """Join existing clusters by centroid; returns the indices still unknown."""
    if not clusters or not idx:
        return idx
    sims = faces.vectors[idx] @ _centroids(clusters, faces.vectors.shape[1]).T
    best = sims.argmax(axis=1)
    score = sims[np.arange(len(idx)), best]
    by_key = {g.key: g for g in clusters}
    cands = [
        (i, clusters[best[n]].key, float(score[n]))
        for n, i in enumerate(idx)
        if score[n] >= params.attach_threshold
    ]
    won = _best_per_photo(faces, cands, lambda photo, key: photo in by_key[key].photos)
    for key, members in _by_key(won).items():
        by_key[key].add(faces, members)
        plan.clusters[key] = by_key[key]
        plan.cluster.update({faces.ids[i]: key for i in members})
    return [i for i in idx if i not in won]


def neighbourhood(unknown: np.ndarray, pool: FaceSet, params: Params, hops: int = 2) -> list[int]:
    """Pool indices within attach_threshold of the unknown faces, `hops` links out."""
    if not len(pool) or not len(unknown):
        return []
    chosen: set[int] = set()
    frontier = unknown
    for _ in range(hops):
        sims = frontier @ pool.vectors.T
        k = min(NEIGHBOURS_PER_FACE, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        hit = np.take_along_axis(sims, top, axis=1) >= params.attach_threshold
        new = set(top[hit].tolist()) - chosen
        if not new:
            break
        chosen |= new
        frontier = pool.vectors[sorted(new)]
    return sorted(chosen)


def _reduce(vectors: np.ndarray, dims: int) -> np.ndarray:
    if not dims or dims >= vectors.shape[1] or len(vectors) <= dims:
        return vectors
    from sklearn.decomposition import PCA

    return normalise(PCA(dims, random_state=0).fit_transform(vectors))


def find_groups(faces: FaceSet, params: Params) -> np.ndarray:
    """hdbscan labels (NOISE or 0..g-1) that obey the group rules in the module doc."""
    n, mcs = len(faces), params.min_cluster_size
    out = np.full(n, NOISE)
    if n < mcs:
        return out
    import hdbscan

    z = _reduce(faces.vectors, params.pca_dims).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        labels = hdbscan.HDBSCAN(
            min_cluster_size=mcs, min_samples=min(params.samples, n - 1), metric="euclidean"
        ).fit_predict(z)
    # What excess-of-mass left as noise is one more candidate (the root's share).
    candidates = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    candidates.append(np.flatnonzero(labels == NOISE))
    nxt = 0
    for idx in candidates:
        for part in linked_parts(idx, faces.vectors, params):
            single = one_per_photo(part, faces)
            # Dropping a face may break links, so a thinned group is checked again.
            pieces = (
                [part] if len(single) == len(part) else linked_parts(single, faces.vectors, params)
            )
            for piece in pieces:
                out[piece] = nxt
                nxt += 1
    return out


def one_per_photo(idx: np.ndarray, faces: FaceSet) -> np.ndarray:
    """Of several members from one photo, keep the one nearest the group's centroid."""
    centre = normalise(faces.vectors[idx].mean(axis=0))
    sims = faces.vectors[idx] @ centre
    best: dict[str, int] = {}
    for n, i in enumerate(idx):
        photo = faces.photos[i]
        if photo not in best or sims[n] > sims[best[photo]]:
            best[photo] = n
    return np.sort(idx[sorted(best.values())])


def linked_parts(idx: np.ndarray, vectors: np.ndarray, params: Params) -> list[np.ndarray]:
    """The connected pieces of `idx` (at least min_cluster_size faces each) in which
    every face has `samples` links (cosine >= attach_threshold) to the others.

    Measured on the original vectors, so a group found in PCA space, or two
    people hdbscan put together, come apart here.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n, mcs = len(idx), params.min_cluster_size
    if n < mcs:
        return []
    need = min(params.samples, mcs - 1)
    v = vectors[idx]
    if n <= DENSE_LINKS:
        adj: Any = v @ v.T >= params.attach_threshold
        np.fill_diagonal(adj, False)
    else:  # sparse, built in slices, so memory stays bounded for large sets
        rows, cols = [], []
        for start in range(0, n, DENSE_LINKS):
            r, c = np.nonzero(v[start : start + DENSE_LINKS] @ v.T >= params.attach_threshold)
            own = r + start != c
            rows.append(r[own] + start)
            cols.append(c[own])
        r, c = np.concatenate(rows), np.concatenate(cols)
        adj = csr_matrix((np.ones(len(r), np.int32), (r, c)), shape=(n, n))
    alive = np.ones(n, dtype=bool)
    while True:
        keep = alive & (adj @ alive.astype(np.int32) >= need)
        if (keep == alive).all():
            break
        alive = keep
    live = np.flatnonzero(alive)
    if len(live) < mcs:
        return []
    count, comp = connected_components(adj[live][:, live], directed=False)
    parts = [idx[live[comp == k]] for k in range(count)]
    return sorted((p for p in parts if len(p) >= mcs), key=lambda p: int(p[0]))


def group_unknown(
    batch: FaceSet,
    rest: list[int],
    pool: FaceSet,
    clusters: list[Group],
    params: Params,
    plan: Plan,
) -> None:
    """Step 3: cluster the unknown faces with their pool neighbourhood.

    A new group whose centroid is within attach_threshold of an existing
    cluster joins that cluster; any other group becomes a new cluster with a
    negative key below every existing key, numbered in a deterministic order.
    """
    near = neighbourhood(batch.vectors[rest], pool, params)
    cand = FaceSet.concat([batch.take(rest), pool.take(near)])
    labels = find_groups(cand, params)
    groups = [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]
    groups.sort(key=lambda idx: min(cand.ids[i] for i in idx))
    dim = batch.vectors.shape[1]
    centroids = _centroids(clusters, dim)
    new_key = min([0, *(g.key for g in clusters)]) - 1
    for idx in groups:
        members = idx.tolist()
        target: Group | None = None
        if len(clusters):
            sims = centroids @ normalise(cand.vectors[idx].mean(axis=0))
            best = int(sims.argmax())
            if sims[best] >= params.attach_threshold:
                target = clusters[best]
                members = [i for i in members if cand.photos[i] not in target.photos]
        if target is None:
            target = Group(new_key, np.zeros(dim, np.float32), 0)
            new_key -= 1
        if not members:
            continue
        target.add(cand, members)
        plan.clusters[target.key] = target
        plan.cluster.update({cand.ids[i]: target.key for i in members})


def plan_batch(
    batch: FaceSet, pool: FaceSet, people: list[Group], clusters: list[Group], params: Params
) -> Plan:
    """All three steps for one batch. `people` and `clusters` are updated in place."""
    plan = Plan()
    rest = match_people(batch, people, params, plan)
    rest = attach(batch, rest, clusters, params, plan)
    group_unknown(batch, rest, pool, clusters, params, plan)
    return plan
