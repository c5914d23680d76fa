"""The clustering engine on synthetic face vectors around a few identities."""

from __future__ import annotations

import numpy as np

from daemon.people.engine import (
    NOISE,
    FaceSet,
    Group,
    Params,
    find_groups,
    plan_batch,
)
from daemon.people.pool import PoolCache
from daemon.people.rebuild import recluster

DIM = 128


def unit(rng: np.random.Generator, n: int = 1) -> np.ndarray:
    v = rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def around(rng: np.random.Generator, centre: np.ndarray, n: int, cos: float = 0.8) -> np.ndarray:
    """n unit vectors at cosine `cos` from `centre` (so about cos² from each other)."""
    noise = rng.standard_normal((n, DIM))
    noise -= np.outer(noise @ centre, centre)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cos * centre + np.sqrt(1 - cos**2) * noise).astype(np.float32)


def faceset(vectors: np.ndarray, prefix: str, photos: list[str] | None = None) -> FaceSet:
    ids = [f"{prefix}{i:03d}:0" for i in range(len(vectors))]
    return FaceSet(ids, photos or [i.split(":")[0] for i in ids], np.ones(len(ids)), vectors)


def people_of(labels: np.ndarray, truth: list[str]) -> list[set[str]]:
    return [{truth[i] for i in np.flatnonzero(labels == g)} for g in range(labels.max() + 1)]


def test_each_identity_becomes_one_pure_group_and_strangers_stay_noise() -> None:
    rng = np.random.default_rng(1)
    centres = unit(rng, 4)
    vectors = np.vstack([*(around(rng, c, 6) for c in centres), unit(rng, 6)])
    truth = [f"id{k}" for k in range(4) for _ in range(6)] + [f"stranger{k}" for k in range(6)]
    labels = find_groups(faceset(vectors, "f"), Params())
    assert sorted(map(sorted, people_of(labels, truth))) == [["id0"], ["id1"], ["id2"], ["id3"]]
    assert (labels[24:] == NOISE).all()


def test_people_do_not_merge_when_hdbscan_works_in_a_few_pca_dimensions() -> None:
    rng = np.random.default_rng(11)
    centres = unit(rng, 6)
    vectors = np.vstack([around(rng, c, 5) for c in centres])
    truth = [f"id{k}" for k in range(6) for _ in range(5)]
    labels = find_groups(faceset(vectors, "f"), Params(pca_dims=4))
    groups = people_of(labels, truth)
    assert all(len(g) == 1 for g in groups) and len(groups) == 6


def test_a_set_holding_one_person_still_forms_their_group() -> None:
    # hdbscan alone never selects the root of its tree, so one person plus a
    # few strangers would come out as all noise.
    rng = np.random.default_rng(2)
    vectors = np.vstack([around(rng, unit(rng)[0], 8), unit(rng, 3)])
    labels = find_groups(faceset(vectors, "f"), Params())
    assert (labels[:8] == 0).all() and (labels[8:] == NOISE).all()


def test_random_faces_form_no_group() -> None:
    labels = find_groups(faceset(unit(np.random.default_rng(3), 40), "f"), Params())
    assert (labels == NOISE).all()


def test_two_faces_of_one_photo_never_share_a_group() -> None:
    rng = np.random.default_rng(4)
    centre = unit(rng)[0]
    vectors = around(rng, centre, 6)
    photos = ["p0", "p1", "p2", "p3", "p4", "p4"]  # p4 shows this person twice (a mirror, say)
    faces = faceset(vectors, "f", photos)
    labels = find_groups(faces, Params())
    grouped = [faces.photos[i] for i in np.flatnonzero(labels == 0)]
    assert len(grouped) == 5 and sorted(set(grouped)) == ["p0", "p1", "p2", "p3", "p4"]
    # Three faces in two photos cannot make a group of three.
    labels = find_groups(faceset(vectors[:3], "g", ["q0", "q1", "q1"]), Params())
    assert (labels == NOISE).all()


def _commit(plan_clusters: dict[int, Group], next_id: int) -> dict[int, int]:
    """What the ledger does: new (negative) keys get fresh ids, old keys stay."""
    ids = {}
    for key in sorted(plan_clusters, key=lambda k: (k < 0, -k if k < 0 else k)):
        if key < 0:
            ids[key] = next_id
            plan_clusters[key].key = next_id
            next_id += 1
        else:
            ids[key] = key
    return ids


def test_cluster_ids_are_stable_across_incremental_batches() -> None:
    rng = np.random.default_rng(5)
    a, b, c = unit(rng, 3)
    params = Params()
    first = faceset(np.vstack([around(rng, a, 4), around(rng, b, 4)]), "one")
    clusters: list[Group] = []
    plan = plan_batch(first, FaceSet.empty(DIM), [], clusters, params)
    ids = _commit(plan.clusters, 1)
    placed = {f: ids[k] for f, k in plan.cluster.items()}
    assert len(set(placed.values())) == 2 and len(placed) == 8
    a_id = placed[first.ids[0]]
    b_id = placed[first.ids[4]]
    clusters = list(plan.clusters.values())

    second = faceset(np.vstack([around(rng, a, 3), around(rng, b, 2), around(rng, c, 4)]), "two")
    plan = plan_batch(second, FaceSet.empty(DIM), [], clusters, params)
    ids = _commit(plan.clusters, 3)
    got = {f: ids[k] for f, k in plan.cluster.items()}
    assert {got[f] for f in second.ids[:3]} == {a_id}  # the cluster that gained faces kept its id
    assert {got[f] for f in second.ids[3:5]} == {b_id}
    assert len({got[f] for f in second.ids[5:]}) == 1 and got[second.ids[5]] not in (a_id, b_id)
    assert not set(plan.cluster) & set(first.ids)  # earlier faces never moved
    sizes = {g.key: g.size for g in clusters}
    assert sizes[a_id] == 7 and sizes[b_id] == 6


def test_new_faces_group_with_earlier_noise_from_the_pool() -> None:
    rng = np.random.default_rng(6)
    d = unit(rng)[0]
    pool = faceset(np.vstack([around(rng, d, 2), unit(rng, 5)]), "old")
    batch = faceset(around(rng, d, 1), "new")
    plan = plan_batch(batch, pool, [], [], Params())
    assert set(plan.cluster) == {batch.ids[0], pool.ids[0], pool.ids[1]}


def test_named_people_take_close_faces_and_suggest_the_near_ones() -> None:
    rng = np.random.default_rng(7)
    proto = unit(rng)[0]
    alice = Group(11, proto.copy(), 5)
    params = Params(assign_threshold=0.5, suggest_threshold=0.4)
    close, near, far = around(rng, proto, 1, 0.8), around(rng, proto, 1, 0.45), unit(rng, 1)
    # Two faces of one photo both look like Alice: only the closer one can be her.
    twin_a, twin_b = around(rng, proto, 1, 0.9), around(rng, proto, 1, 0.7)
    batch = faceset(np.vstack([close, near, far, twin_a, twin_b]), "f")
    batch.photos[3] = batch.photos[4] = "group-photo"
    plan = plan_batch(batch, FaceSet.empty(DIM), [alice], [], params)
    ids = batch.ids
    assert plan.person == {ids[0]: 11, ids[3]: 11}
    assert list(plan.suggestion) == [ids[1]] and plan.suggestion[ids[1]][0] == 11
    assert 0.4 <= plan.suggestion[ids[1]][1] < 0.5
    assert alice.size == 7  # the prototype moved with its new faces
    assert plan.people == {11: alice}


def test_a_face_already_given_to_a_person_in_its_photo_blocks_a_second() -> None:
    rng = np.random.default_rng(8)
    proto = unit(rng)[0]
    bob = Group(3, proto.copy(), 4, photos={"shared"})
    batch = faceset(around(rng, proto, 1, 0.9), "f", ["shared"])
    plan = plan_batch(batch, FaceSet.empty(DIM), [bob], [], Params())
    assert plan.person == {}


def test_the_pool_keeps_only_the_most_recent_pool_max_faces() -> None:
    rng = np.random.default_rng(9)
    vectors = {f"f{i:02d}:0": v for i, v in enumerate(unit(rng, 25))}
    asked: list[list[str]] = []

    def fetch(ids: list[str]) -> dict[str, np.ndarray]:
        asked.append(ids)
        return {i: vectors[i] for i in ids}

    newest_first = [(f, f[:3], 1.0) for f in sorted(vectors, reverse=True)]
    cache = PoolCache(pool_max=10)
    pool = cache.sync(newest_first, fetch, DIM)
    assert pool.ids == [f for f, _, _ in newest_first[:10]] and len(cache) == 10
    # Two newer faces arrive: only they are fetched, the two oldest fall out.
    newest_first = [("g1:0", "g1", 1.0), ("g0:0", "g0", 1.0), *newest_first]
    vectors.update({"g1:0": unit(rng)[0], "g0:0": unit(rng)[0]})
    pool = cache.sync(newest_first, fetch, DIM)
    assert asked[-1] == ["g1:0", "g0:0"]
    assert len(pool) == 10 and pool.ids[:2] == ["g1:0", "g0:0"] and "f16:0" not in pool.ids


def test_full_recluster_keeps_old_ids_where_groups_overlap_most() -> None:
    rng = np.random.default_rng(10)
    a, b, c = unit(rng, 3)
    vectors = np.vstack([around(rng, a, 5), around(rng, b, 5), around(rng, c, 4), unit(rng, 3)])
    faces = faceset(vectors, "f")
    ids = faces.ids
    # Before: A was cluster 7 (with one of B's faces by mistake), B cluster 9, C unknown,
    # and a stale cluster 4 held two strangers.
    old = {**{f: 7 for f in ids[:5]}, ids[5]: 7, **{f: 9 for f in ids[6:10]}, ids[14]: 4}
    old[ids[15]] = 4
    labels, groups = recluster(faces, old, Params(), chunk=6)
    assert {labels[f] for f in ids[:5]} == {7}
    assert {labels[f] for f in ids[5:10]} == {9}
    assert len({labels[f] for f in ids[10:14]}) == 1 and labels[ids[10]] < 0
    assert not set(ids[14:]) & set(labels)  # strangers are noise; cluster 4 is gone
    assert sorted(groups) == [labels[ids[10]], 7, 9]
    assert groups[7].size == 5 and groups[9].size == 5
