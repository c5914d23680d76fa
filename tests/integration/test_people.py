"""Naming, merging and correcting people against a real SQLite ledger and real ChromaDB.

The face vectors are synthetic (unit vectors around a few identities) and are
written the way the faces phase writes real ones; what is tested here is the
bookkeeping, which does not depend on the face model. Clusters come from the
real clustering phase.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.errors import Code, InsufficientData, InvalidState, NotFound
from daemon.ledger.faces import NewFace
from daemon.ledger.ledger import Ledger
from daemon.people.operations import (
    list_clusters,
    list_people,
    merge,
    name_cluster,
    show,
    unassign_face,
)
from daemon.phases.base import BatchInfo, PhaseContext
from daemon.phases.clustering import ClusteringPhase
from daemon.store.chroma import Store
from daemon.vocab import FileEntry

DIM = 64


@dataclass
class Lib:
    config: Config
    ledger: Ledger
    store: Store
    phase: ClusteringPhase
    rng: np.random.Generator

    def centre(self) -> np.ndarray:
        v = self.rng.standard_normal(DIM)
        return v / np.linalg.norm(v)

    def around(self, centre: np.ndarray, n: int, cos: float = 0.85) -> np.ndarray:
        noise = self.rng.standard_normal((n, DIM))
        noise -= np.outer(noise @ centre, centre)
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        return (cos * centre + np.sqrt(1 - cos**2) * noise).astype(np.float32)

    def batch(self, name: str, vectors: np.ndarray, photos: list[int] | None = None) -> list[str]:
        """Faces (one per photo unless `photos` says which photo each is in), then clustering."""
        photos = photos if photos is not None else list(range(len(vectors)))
        shas = {p: hashlib.sha256(f"{name}/{p}".encode()).hexdigest() for p in set(photos)}
        bid = self.ledger.claims.reserve_batch(name, "folder", [name])
        self.ledger.claims.set_batch_path(bid, f"/data/batches/{name}")
        files = [FileEntry(f"{p}.jpg", s, 1, "jpeg") for p, s in shas.items()]
        self.ledger.claims.finish_claim(bid, files, [], ["faces", "clustering"])
        image = {r["sha256"]: r["image_id"] for r in self.ledger.query("SELECT * FROM images")}
        seen: dict[int, int] = {}
        ids = []
        for p in photos:
            ids.append(f"{shas[p]}:{seen.get(p, 0)}")
            seen[p] = seen.get(p, 0) + 1
        metas = [
            {"image_id": shas[p], "batch_id": bid, "person": "", "cluster": "",
             "suggested_person": ""}
            for p in photos
        ]  # fmt: skip
        self.store.upsert_faces(ids, vectors, metas)
        for f, p in zip(ids, photos, strict=True):
            self.ledger.faces.add(bid, image[shas[p]], shas[p], [NewFace(f, 0.9, 10000.0)])
        self.phase.run(BatchInfo(bid, name, Path(name)), lambda n: None, lambda t: None)
        return ids

    def face(self, face_id: str) -> dict:
        row = self.ledger.query(
            "SELECT f.cluster_id, p.name person FROM faces f LEFT JOIN people p USING(person_id)"
            " WHERE face_id=?",
            (face_id,),
        )[0]
        meta = self.store.get_faces(ids=[face_id]).metadatas[0]
        # The ledger decides; Chroma's metadata must say the same.
        assert meta["person"] == (row["person"] or "")
        assert meta["cluster"] == ("" if row["cluster_id"] is None else str(row["cluster_id"]))
        return dict(row)

    def cluster_of(self, face_id: str) -> int:
        return self.face(face_id)["cluster_id"]


@pytest.fixture
def lib(tmp_path: Path) -> Lib:
    cfg = Config.model_validate({"data_dir": str(tmp_path / "data")})
    ledger, store = Ledger(cfg.ledger_path), Store(cfg)
    store.open_faces("synthetic", DIM)
    phase = ClusteringPhase()
    phase.setup(PhaseContext(cfg, store, ledger, None))
    return Lib(cfg, ledger, store, phase, np.random.default_rng(0))


def with_min_faces(lib: Lib, n: int) -> Config:
    return lib.config.model_copy(
        update={"clustering": lib.config.clustering.model_copy(update={"min_faces": n})}
    )


def test_too_few_faces_is_insufficient_data_and_changes_nothing(lib: Lib) -> None:
    ids = lib.batch("a", lib.around(lib.centre(), 3))
    cid = lib.cluster_of(ids[0])
    with pytest.raises(InsufficientData) as err:
        name_cluster(lib.ledger, lib.store, with_min_faces(lib, 4), cid, "Alice")
    assert err.value.code == Code.INSUFFICIENT_DATA
    assert "3 usable faces" in err.value.message and "at least 4" in err.value.message
    assert list_people(lib.ledger) == []
    assert all(lib.face(f) == {"cluster_id": cid, "person": None} for f in ids)


def test_naming_a_cluster_makes_a_person_in_the_ledger_and_in_chroma(lib: Lib) -> None:
    ids = lib.batch("a", lib.around(lib.centre(), 4))
    cid = lib.cluster_of(ids[0])
    person = name_cluster(lib.ledger, lib.store, lib.config, cid, "  Alice  Smith ")
    assert (person.name, person.faces, person.clusters) == ("Alice Smith", 4, [cid])
    assert person.representative in ids
    assert person.image_path is not None and person.image_path.startswith("/data/batches/a/")
    assert all(lib.face(f)["person"] == "Alice Smith" for f in ids)
    (info,) = list_clusters(lib.ledger)
    assert (info.cluster_id, info.faces, info.person) == (cid, 4, "Alice Smith")
    assert list_clusters(lib.ledger, unnamed_only=True) == []
    # Naming it the same again is a no-op; another name is refused.
    assert name_cluster(lib.ledger, lib.store, lib.config, cid, "Alice Smith").faces == 4
    with pytest.raises(InvalidState):
        name_cluster(lib.ledger, lib.store, lib.config, cid, "Bob")


def test_an_existing_name_merges_and_one_photo_never_gives_a_person_two_faces(lib: Lib) -> None:
    first = lib.batch("a", lib.around(lib.centre(), 4))
    name_cluster(lib.ledger, lib.store, lib.config, lib.cluster_of(first[0]), "Alice")
    # Alice in another look, far from her prototype: a cluster of its own. Its
    # third face shares a photo with one of the first cluster's faces.
    second = lib.batch("b", lib.around(lib.centre(), 3))
    cid = lib.cluster_of(second[0])
    shared_photo = first[0].split(":")[0]
    with lib.ledger.transaction() as conn:
        conn.execute("UPDATE faces SET sha256=? WHERE face_id=?", (shared_photo, second[2]))
    person = name_cluster(lib.ledger, lib.store, lib.config, cid, "Alice")
    assert person.faces == 6 and sorted(person.clusters) == sorted([lib.cluster_of(first[0]), cid])
    assert lib.face(second[2]) == {"cluster_id": None, "person": None}  # back in the pool
    assert [p.name for p in list_people(lib.ledger)] == ["Alice"]
    proto = lib.ledger.query("SELECT prototype FROM people")[0]["prototype"]
    vectors = lib.store.get_faces(ids=first + second[:2])
    assert np.allclose(np.frombuffer(proto, np.float32), vectors.embeddings.mean(axis=0), atol=1e-5)


def test_an_unassigned_face_goes_back_to_the_pool_and_stays_away_from_that_person(
    lib: Lib,
) -> None:
    alice, bob = lib.centre(), lib.centre()
    # A face of Bob's lookalike is close enough to Alice's faces to join her cluster.
    between = (alice + bob) / np.linalg.norm(alice + bob)
    ids = lib.batch("a", np.vstack([lib.around(alice, 4), between[None, :].astype(np.float32)]))
    odd = ids[4]
    cid = lib.cluster_of(odd)
    assert name_cluster(lib.ledger, lib.store, lib.config, cid, "Alice").faces == 5

    ref = unassign_face(lib.ledger, lib.store, odd)
    assert (ref.person, ref.cluster_id) == (None, None)
    assert lib.face(odd) == {"cluster_id": None, "person": None}
    assert show(lib.ledger, "Alice").person.faces == 4
    rejected = lib.ledger.query("SELECT face_id FROM face_rejections")
    assert [r["face_id"] for r in rejected] == [odd]

    # Bob's photos arrive: the odd face groups with them, not with Alice.
    bobs = lib.batch("b", lib.around(bob, 3))
    bob_cluster = lib.cluster_of(bobs[0])
    assert lib.face(odd) == {"cluster_id": bob_cluster, "person": None}
    # Even merging that cluster into Alice by hand leaves the rejected face out.
    merged = merge(lib.ledger, lib.store, "Alice", bob_cluster)
    assert merged.faces == 7
    assert lib.face(odd) == {"cluster_id": None, "person": None}


def test_merging_two_people_and_two_clusters(lib: Lib) -> None:
    a = lib.batch("a", lib.around(lib.centre(), 3))
    b = lib.batch("b", lib.around(lib.centre(), 3))
    c = lib.batch("c", lib.around(lib.centre(), 3))
    d = lib.batch("d", lib.around(lib.centre(), 4))
    name_cluster(lib.ledger, lib.store, lib.config, lib.cluster_of(a[0]), "Alice")
    name_cluster(lib.ledger, lib.store, lib.config, lib.cluster_of(b[0]), "Al")
    person = merge(lib.ledger, lib.store, "Alice", "Al")
    assert (person.name, person.faces) == ("Alice", 6)
    assert [p.name for p in list_people(lib.ledger)] == ["Alice"]
    assert all(lib.face(f)["person"] == "Alice" for f in a + b)

    keep, gone = lib.cluster_of(c[0]), lib.cluster_of(d[0])
    info = merge(lib.ledger, lib.store, str(keep), f"#{gone}")
    assert (info.cluster_id, info.faces, info.person) == (keep, 7, None)
    assert all(lib.cluster_of(f) == keep for f in c + d)
    assert [x.cluster_id for x in list_clusters(lib.ledger, unnamed_only=True)] == [keep]
    with pytest.raises(InvalidState):
        merge(lib.ledger, lib.store, keep, keep)


def test_unknown_people_clusters_and_faces_are_not_found(lib: Lib) -> None:
    lib.batch("a", lib.around(lib.centre(), 3))
    for call in (
        lambda: name_cluster(lib.ledger, lib.store, lib.config, 999, "Zed"),
        lambda: show(lib.ledger, "Nobody"),
        lambda: merge(lib.ledger, lib.store, "Nobody", 1),
        lambda: unassign_face(lib.ledger, lib.store, "feed:0"),
    ):
        with pytest.raises(NotFound) as err:
            call()
        assert err.value.code == Code.NOT_FOUND
    with pytest.raises(InvalidState):
        name_cluster(lib.ledger, lib.store, lib.config, 1, "1234")


def test_show_lists_a_clusters_faces_best_first(lib: Lib) -> None:
    ids = lib.batch("a", lib.around(lib.centre(), 3))
    cid = lib.cluster_of(ids[0])
    with lib.ledger.transaction() as conn:
        conn.execute("UPDATE faces SET area=40000 WHERE face_id=?", (ids[1],))
    detail = show(lib.ledger, cid)
    assert detail.person is None and detail.cluster.cluster_id == cid
    assert detail.faces[0].face_id == ids[1] and {f.face_id for f in detail.faces} == set(ids)
    assert all(f.image_path.startswith("/data/batches/a/") for f in detail.faces)
