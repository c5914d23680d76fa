"""Reviewing suggestions, splitting clusters, and who is in each photo, against a real
SQLite ledger and real ChromaDB.

Face vectors are synthetic (see tests/integration/test_people.py); the faces,
clusters and suggestions come from the real clustering phase, and every
change is checked in the ledger and in Chroma's face and image metadata.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.errors import InsufficientData, InvalidState, NotFound
from daemon.ledger.ledger import Ledger
from daemon.people import review
from daemon.people.operations import merge, name_cluster, show
from daemon.people.photos import backfill
from daemon.people.recluster import recluster_all
from daemon.people.split import split_cluster
from daemon.phases.base import PhaseContext
from daemon.phases.clustering import ClusteringPhase
from daemon.store.chroma import Store
from tests.integration.test_people import DIM, Lib


@pytest.fixture
def lib(tmp_path: Path) -> Lib:
    # Wide thresholds, so that a face at cosine ~0.45 to a person is a suggestion for sure.
    cfg = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "clustering": {"assign_threshold": 0.65, "suggest_threshold": 0.3},
        }
    )
    ledger, store = Ledger(cfg.ledger_path), Store(cfg)
    store.open_faces("synthetic", DIM)
    store.open_images("synthetic-clip", 8)
    phase = ClusteringPhase()
    phase.setup(PhaseContext(cfg, store, ledger, None))
    return Lib(cfg, ledger, store, phase, np.random.default_rng(0))


def photos(lib: Lib, name: str, n: int) -> list[str]:
    """Image records for a batch's photos (as the embedding phase writes them)."""
    shas = [hashlib.sha256(f"{name}/{p}".encode()).hexdigest() for p in range(n)]
    vectors = lib.rng.standard_normal((n, 8)).astype(np.float32)
    lib.store.upsert_images(shas, vectors, [{"path": f"/{name}/{p}.jpg"} for p in range(n)])
    return shas


def people_in(lib: Lib, face_id: str) -> list[int] | None:
    sha = face_id.split(":")[0]
    return lib.store.get_images([sha])[0]["metadata"].get("people")


def suggested(lib: Lib, face_id: str) -> str | None:
    meta = lib.store.get_faces(ids=[face_id]).metadatas[0]
    row = lib.ledger.query(
        "SELECT p.name FROM faces f LEFT JOIN people p ON p.person_id = f.suggested_person_id"
        " WHERE f.face_id=?",
        (face_id,),
    )[0]
    assert meta["suggested_person"] == (row["name"] or "")  # the mirror agrees
    return row["name"]


def named_alice(lib: Lib) -> tuple[np.ndarray, int, list[str]]:
    alice = lib.centre()
    photos(lib, "a", 4)
    ids = lib.batch("a", lib.around(alice, 4, cos=0.9))
    person = name_cluster(lib.ledger, lib.store, lib.config, lib.cluster_of(ids[0]), "Alice")
    return alice, person.person_id, ids


def test_accepting_and_rejecting_suggestions(lib: Lib) -> None:
    alice, alice_id, first = named_alice(lib)
    assert people_in(lib, first[0]) == [alice_id]
    photos(lib, "b", 4)
    maybe = lib.batch("b", lib.around(alice, 4, cos=0.45))
    listed = review.suggestions(lib.ledger)
    assert {f.face_id for f in listed} == set(maybe)
    assert [f.face_id for f in review.suggestions(lib.ledger, "Alice")] == [
        f.face_id for f in listed
    ]
    scores = [f.suggestion_score for f in listed]
    assert scores == sorted(scores, reverse=True)
    assert all(suggested(lib, f) == "Alice" for f in maybe)
    with pytest.raises(NotFound):
        review.suggestions(lib.ledger, "Nobody")

    # Accept one: it is Alice's, in no cluster, in Chroma too, and her photo says so.
    (done,) = review.accept(lib.ledger, lib.store, [maybe[0]])
    assert done.done and done.person == "Alice"
    assert lib.face(maybe[0]) == {"cluster_id": None, "person": "Alice"}
    assert people_in(lib, maybe[0]) == [alice_id]
    assert show(lib.ledger, "Alice").person.faces == 5

    # Reject one: recorded, the suggestion is gone, the face stays where it was.
    before = lib.face(maybe[1])
    (done,) = review.reject(lib.ledger, lib.store, [maybe[1]])
    assert done.done and done.person == "Alice"
    assert lib.face(maybe[1]) == before and suggested(lib, maybe[1]) is None
    assert lib.ledger.people.rejected(alice_id) == {maybe[1]}
    assert people_in(lib, maybe[1]) is None

    # A later batch: a copy of the rejected face (the photo resized) is not suggested for
    # Alice; another face like the first ones still is.
    rejected_vec = lib.store.get_faces(ids=[maybe[1]]).embeddings[0]
    photos(lib, "c", 2)
    copy, fresh = lib.batch(
        "c", np.vstack([lib.around(rejected_vec, 1, cos=0.97), lib.around(alice, 1, cos=0.45)])
    )
    assert suggested(lib, copy) is None and lib.face(copy)["person"] is None
    assert suggested(lib, fresh) == "Alice"
    # A full recluster does not bring either back to her.
    recluster_all(lib.ledger, lib.store, lib.config)
    assert lib.face(maybe[1])["person"] is None and suggested(lib, maybe[1]) is None
    assert lib.face(copy)["person"] is None

    # --all: the rest at once; a face without a suggestion cannot be accepted.
    left = {f.face_id for f in review.suggestions(lib.ledger, "Alice")}
    assert left == {maybe[2], maybe[3], fresh}
    done = review.reject_all(lib.ledger, lib.store, "Alice")
    assert {d.face_id for d in done} == left and review.suggestions(lib.ledger) == []
    with pytest.raises(InvalidState):
        review.accept(lib.ledger, lib.store, [maybe[2]])
    with pytest.raises(InvalidState):
        review.reject(lib.ledger, lib.store, [copy])

    # Rejecting one of her own faces is unassigning it.
    (done,) = review.reject(lib.ledger, lib.store, [first[0]])
    assert lib.face(first[0]) == {"cluster_id": None, "person": None}
    assert people_in(lib, first[0]) is None
    assert first[0] in lib.ledger.people.rejected(alice_id)


def test_accepting_lifts_a_rejection_and_one_photo_gives_one_face(lib: Lib) -> None:
    alice, alice_id, first = named_alice(lib)
    photos(lib, "b", 2)
    maybe = lib.batch("b", lib.around(alice, 2, cos=0.45))
    review.reject(lib.ledger, lib.store, [maybe[0]])
    with lib.ledger.transaction() as conn:  # suggested again (as before the rejection)
        conn.execute(
            "UPDATE faces SET suggested_person_id=?, suggestion_score=0.45 WHERE face_id=?",
            (alice_id, maybe[0]),
        )
        # and maybe[1] sits in a photo that already gives Alice a face
        conn.execute("UPDATE faces SET sha256=? WHERE face_id=?", (first[0][:64], maybe[1]))
    out = review.accept_all(lib.ledger, lib.store, "Alice")
    assert {d.face_id: d.done for d in out} == {maybe[0]: True, maybe[1]: False}
    assert "already has a face in this photo" in next(d.reason for d in out if not d.done)
    assert lib.ledger.people.rejected(alice_id) == set()
    assert lib.face(maybe[0])["person"] == "Alice"


def test_splitting_a_mixed_cluster(lib: Lib) -> None:
    a, b = lib.centre(), lib.centre()
    photos(lib, "a", 5)
    photos(lib, "b", 3)
    fa = lib.batch("a", lib.around(a, 5, cos=0.9))
    fb = lib.batch("b", lib.around(b, 3, cos=0.9))
    keep, gone = lib.cluster_of(fa[0]), lib.cluster_of(fb[0])
    merge(lib.ledger, lib.store, keep, gone)  # a mistake: two people in one cluster
    assert {lib.cluster_of(f) for f in fa + fb} == {keep}

    res = split_cluster(lib.ledger, lib.store, keep)
    assert res.cluster_id == keep and res.person is None and res.rejected == 0
    assert (res.parts[0].cluster_id, res.parts[0].faces) == (keep, 5)
    new = res.parts[1].cluster_id
    assert res.parts[1].faces == 3 and new != keep
    assert {lib.cluster_of(f) for f in fa} == {keep} and {lib.cluster_of(f) for f in fb} == {new}
    assert res.parts[1].representative in fb

    # Named and mixed again: split by two faces named, the other part leaves Alice for good.
    merge(lib.ledger, lib.store, keep, new)
    alice = name_cluster(lib.ledger, lib.store, lib.config, keep, "Alice")
    assert people_in(lib, fb[0]) == [alice.person_id]
    res = split_cluster(lib.ledger, lib.store, keep, [fb[1], fa[2]])
    assert res.person == "Alice" and res.rejected == 3
    assert [p.faces for p in res.parts] == [5, 3]
    assert all(lib.face(f) == {"cluster_id": keep, "person": "Alice"} for f in fa)
    other = res.parts[1].cluster_id
    assert all(lib.face(f) == {"cluster_id": other, "person": None} for f in fb)
    assert lib.ledger.people.rejected(alice.person_id) == set(fb)
    assert people_in(lib, fb[0]) is None and people_in(lib, fa[0]) == [alice.person_id]
    # Merging the part back into Alice by mistake leaves those faces out.
    assert merge(lib.ledger, lib.store, "Alice", other, lib.config).faces == 5

    for call, error in (
        (lambda: split_cluster(lib.ledger, lib.store, 999), NotFound),
        (lambda: split_cluster(lib.ledger, lib.store, keep, [fa[0]]), InvalidState),
        (lambda: split_cluster(lib.ledger, lib.store, keep, [fa[0], fb[0]]), InvalidState),
    ):
        with pytest.raises(error):
            call()
    lone = lib.batch("c", lib.around(lib.centre(), 3, cos=0.9))
    cid = lib.cluster_of(lone[0])
    split_cluster(lib.ledger, lib.store, cid, [lone[0], lone[1]])
    with pytest.raises(InsufficientData):
        split_cluster(lib.ledger, lib.store, lib.cluster_of(lone[1]))


def test_backfill_fills_in_people_and_capture_times_once(lib: Lib) -> None:
    _, alice_id, first = named_alice(lib)
    shas = [f.split(":")[0] for f in first]
    # A library from before: no people, no captured_ts, and the ledger never backfilled.
    lib.store.update_images(shas, [{"people": None, "captured_at": "2024-06-01T10:00:00"}] * 4)
    with lib.ledger.transaction() as conn:
        conn.execute("DELETE FROM meta WHERE key='photo_mirror'")
    assert people_in(lib, first[0]) is None
    assert backfill(lib.ledger, lib.store) is True
    meta = lib.store.get_images(shas)
    assert all(m["metadata"]["people"] == [alice_id] for m in meta)
    assert all(m["metadata"]["captured_ts"] == 1717236000.0 for m in meta)
    assert backfill(lib.ledger, lib.store) is False
    # What `search --person` asks the ledger: at most this many photos can pass.
    assert lib.ledger.photos.count_showing([alice_id]) == 4
    assert lib.ledger.photos.count_showing([alice_id, alice_id + 1]) == 0
    assert lib.ledger.photos.count_in_batches([1]) == 4
