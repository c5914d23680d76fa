"""Rejections in the clustering maths, and the split of a mixed cluster (pure numpy)."""

from __future__ import annotations

import numpy as np

from daemon.people.engine import Group, Params, Plan, match_people
from daemon.people.rejections import Rejections
from daemon.people.split import by_seeds, two_way
from tests.unit.test_facecluster import around, faceset, unit


def test_a_banned_person_is_skipped_and_the_next_best_may_still_suggest() -> None:
    rng = np.random.default_rng(3)
    alice, bob = unit(rng, 2)
    # A face near Alice and, less so, near Bob.
    mix = alice * 0.8 + bob * 0.5
    face = (mix / np.linalg.norm(mix)).astype(np.float32)[None, :]
    people = [Group(1, alice.copy(), 5), Group(2, bob.copy(), 5)]
    faces = faceset(face, "f")
    params = Params(assign_threshold=0.7, suggest_threshold=0.4)

    plan = Plan()
    assert match_people(faces, [Group(1, alice.copy(), 5)], params, plan) == []
    assert plan.person == {faces.ids[0]: 1}

    plan = Plan()
    rest = match_people(faces, people, params, plan, [{1}])
    assert rest == [0] and plan.person == {}
    assert plan.suggestion[faces.ids[0]][0] == 2  # Bob, the next best, is only suggested

    plan = Plan()
    match_people(faces, people, params, plan, [{1, 2}])
    assert plan.person == {} and plan.suggestion == {}


def test_a_copy_of_a_rejected_face_is_banned_and_another_photo_of_them_is_not() -> None:
    rng = np.random.default_rng(4)
    alice = unit(rng)[0]
    rejected = around(rng, alice, 1, cos=0.8)[0]
    copy = around(rng, rejected, 1, cos=0.95)[0]  # the same face, resized or re-encoded
    other = around(rng, alice, 1, cos=0.8)[0]  # another photo of the same person
    assert float(other @ rejected) < 0.9
    rej = Rejections(
        [("r:0", 7)], np.asarray([7]), rejected[None, :].astype(np.float32), threshold=0.9
    )
    faces = faceset(np.stack([copy, other]), "n")
    assert rej.banned(faces) == [{7}, set()]
    # The rejected face itself is banned by id, whatever its vector.
    by_id = faceset(np.stack([other]), "x")
    by_id.ids[0] = "r:0"
    assert rej.banned(by_id) == [{7}]
    # No rejections, nothing banned; vectors of another dimension are ignored.
    assert not Rejections([], np.zeros(0, np.int64), np.zeros((0, 0)), 0.9)
    assert rej.banned(faceset(np.ones((1, 3), np.float32), "d")) == [set()]


def test_two_way_separates_two_people_and_seeds_decide_when_given() -> None:
    rng = np.random.default_rng(5)
    a, b = unit(rng, 2)
    vectors = np.vstack([around(rng, a, 5, 0.85), around(rng, b, 3, 0.85)])
    labels = two_way(vectors)
    assert len(set(labels[:5].tolist())) == 1 and len(set(labels[5:].tolist())) == 1
    assert labels[0] != labels[5]
    faces = faceset(vectors, "f")
    seeded = by_seeds(faces, [faces.ids[6], faces.ids[1]])
    assert seeded.tolist() == [1] * 5 + [0] * 3
