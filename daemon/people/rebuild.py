"""The full rebuild of unnamed clusters: what `imgtrain people recluster` computes.

All unnamed faces are replayed in chronological chunks through the same steps
as a batch (`plan_batch`) with an unbounded pool, then the new groups take the
old cluster ids they overlap most, so a rebuild keeps the ids people know.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from daemon.people.engine import RECLUSTER_CHUNK, FaceSet, Group, Params, plan_batch


def overlap_ids(new: dict[str, int], old: dict[str, int]) -> dict[int, int]:
    """{new group key: old cluster id}, greedily by the largest shared face count."""
    counts = Counter((n, old[f]) for f, n in new.items() if f in old)
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for (n, o), _c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1], kv[0][0])):
        if n not in mapping and o not in used:
            mapping[n] = o
            used.add(o)
    return mapping


def recluster(
    faces: FaceSet, old: dict[str, int], params: Params, chunk: int = RECLUSTER_CHUNK
) -> tuple[dict[str, int], dict[int, Group]]:
    """Rebuild the clusters of `faces` (in chronological order) from scratch.

    Returns ({face: cluster key}, {key: group}): a group's key is the old
    cluster id it shares most faces with (`old`: face -> old cluster id), else
    -1, -2, ... for the caller to replace with fresh ids.
    """
    clusters: list[Group] = []
    assigned: dict[str, int] = {}
    noise = np.zeros(0, dtype=np.int64)
    for start in range(0, len(faces), chunk):
        part = np.arange(start, min(start + chunk, len(faces)))
        plan = plan_batch(faces.take(part), faces.take(noise), [], clusters, params)
        known = {g.key for g in clusters}
        clusters += [g for k, g in sorted(plan.clusters.items(), reverse=True) if k not in known]
        assigned.update(plan.cluster)
        noise = np.asarray(
            [i for i in [*noise.tolist(), *part.tolist()] if faces.ids[i] not in assigned],
            dtype=np.int64,
        )
    mapping = overlap_ids(assigned, old)
    final: dict[int, int] = {}
    fresh = 0
    for group in sorted(clusters, key=lambda g: -g.key):
        if group.key in mapping:
            final[group.key] = mapping[group.key]
        else:
            fresh -= 1
            final[group.key] = fresh
    for group in clusters:
        group.key = final[group.key]
    return {f: final[k] for f, k in assigned.items()}, {g.key: g for g in clusters}
