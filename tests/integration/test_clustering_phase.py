"""The clustering phase on real faces: real models, real SQLite ledger, real ChromaDB.

Photos come from ../shared/photos (README there): obama 7 faces, kit_harington
4, biden 4, rose_leslie 3, alex_lacamoire 2, and two strangers. The faces
phase numbers a photo's faces left to right, which gives the truth for the
photos showing several people.
"""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from daemon.config import Config
from daemon.imaging.decode import decode
from daemon.ledger.faces import NewFace
from daemon.ledger.ledger import Ledger
from daemon.models import ModelRegistry
from daemon.people.operations import name_cluster
from daemon.people.recluster import recluster_all
from daemon.phases.base import BatchInfo, DecodedImage, PhaseContext
from daemon.phases.clustering import ClusteringPhase
from daemon.phases.faces import FacesPhase
from daemon.store.chroma import Store
from daemon.vocab import FileEntry

SEVERAL = {
    "mixed/kit_with_rose.jpg": ["rose_leslie", "kit_harington"],
    "mixed/obama_and_biden.jpg": ["biden", "obama", "stranger-a"],
    "mixed/two_people.jpg": ["obama", "biden"],
}
ONE = {
    "alex_lacamoire1": "alex_lacamoire",
    "johnsnow_test1": "kit_harington",
    "lin-manuel-miranda": "stranger-b",
    "obama1": "obama",
    "obama3": "obama",
    "obama_partial_face": "obama",
}


def identity(rel: str, n: int) -> str:
    """Who face n of the photo at `rel` (people/... or mixed/...) is."""
    if rel in SEVERAL:
        return SEVERAL[rel][n]
    if rel.startswith("people/"):
        return rel.split("/")[1]
    return ONE[Path(rel).stem]


@dataclass
class Library:
    config: Config
    ledger: Ledger
    store: Store
    ctx: PhaseContext
    faces: FacesPhase
    clustering: ClusteringPhase
    truth: dict[str, str]  # face_id -> identity

    def ingest(self, name: str, photos: list[Path], root: Path) -> BatchInfo:
        """Claim a batch and run the real faces phase on it, as the daemon would."""
        home = self.config.batches_dir / name
        entries = []
        for src in photos:
            rel = str(src.relative_to(root))
            dst = home / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            sha = hashlib.sha256(dst.read_bytes()).hexdigest()
            entries.append(FileEntry(rel, sha, dst.stat().st_size, src.suffix.lstrip(".")))
        bid = self.ledger.claims.reserve_batch(name, "folder", [name])
        self.ledger.claims.set_batch_path(bid, home)
        self.ledger.claims.finish_claim(bid, entries, [], self.config.phases)
        info = BatchInfo(bid, name, home)
        images = []
        for row in self.ledger.pending_images(bid):
            d = decode(home / row.rel_path, self.config.decode)
            images.append(
                DecodedImage(
                    row.image_id, row.sha256, home / row.rel_path, row.rel_path,
                    d.image, d.width, d.height, d.scale,
                )
            )  # fmt: skip
        outcomes = self.faces.process(info, images, lambda n, **_: None)
        self.ledger.record_outcomes(bid, "faces", outcomes)
        for d in images:
            found = self.ledger.query("SELECT face_id FROM faces WHERE sha256=?", (d.sha256,))
            for r in found:
                self.truth[r["face_id"]] = identity(d.rel_path, int(r["face_id"].split(":")[1]))
        return info

    def cluster(self, info: BatchInfo) -> list[str]:
        said: list[str] = []
        steps = []
        self.clustering.run(info, steps.append, said.append)
        assert steps == [1] * self.clustering.total_steps(info) and len(said) == len(steps)
        return said

    def clusters(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for r in self.ledger.query("SELECT face_id, cluster_id FROM faces WHERE cluster_id > 0"):
            out.setdefault(r["cluster_id"], []).append(r["face_id"])
        return out


@pytest.fixture(scope="module")
def models(face_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> ModelRegistry:
    cfg = Config.model_validate({"faces": {"model_dir": str(face_pack), "threads": 1}})
    return ModelRegistry(cfg)  # loaded once for every test here


def library(tmp_path: Path, models: ModelRegistry, **clustering: object) -> Library:
    cfg = Config.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "phases": ["faces", "clustering"],
            "faces": models.config.faces.model_dump(),
            "clustering": clustering,
        }
    )
    ledger, store = Ledger(cfg.ledger_path), Store(cfg)
    ctx = PhaseContext(cfg, store, ledger, models)
    faces, clustering_phase = FacesPhase(), ClusteringPhase()
    faces.setup(ctx)
    clustering_phase.setup(ctx)
    return Library(cfg, ledger, store, ctx, faces, clustering_phase, {})


def photos(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file() and p.suffix != ".md")


def chroma_clusters(lib: Library) -> dict[str, str]:
    rows = lib.store.get_faces(ids=sorted(lib.truth))
    return {fid: m["cluster"] for fid, m in zip(rows.ids, rows.metadatas, strict=True)}


def test_faces_of_one_person_share_a_cluster_and_people_never_mix(
    tmp_path: Path, models: ModelRegistry, shared_photos: Path
) -> None:
    lib = library(tmp_path, models)
    first = lib.ingest("people", photos(shared_photos, "people"), shared_photos)
    said = lib.cluster(first)
    assert said[0] == "loading 9 new faces"
    # Nobody has three faces yet: everything waits in the pool, nothing fails.
    assert lib.clusters() == {}
    assert lib.ledger.query("SELECT COUNT(*) n FROM faces WHERE clustered=0")[0]["n"] == 0

    second = lib.ingest("mixed", photos(shared_photos, "mixed"), shared_photos)
    lib.cluster(second)
    clusters = lib.clusters()
    who = {cid: Counter(lib.truth[f] for f in faces) for cid, faces in clusters.items()}
    placed = sum(len(f) for f in clusters.values())
    purity = sum(c.most_common(1)[0][1] for c in who.values()) / placed
    noise = sorted(
        lib.truth[f] for f in set(lib.truth) - {f for fs in clusters.values() for f in fs}
    )
    print(f"\nclusters {dict(who)}\npurity {purity:.2f}, noise {len(noise)}: {noise}")
    assert purity == 1.0
    assert sorted(c.most_common(1)[0] for c in who.values()) == [
        ("biden", 4), ("kit_harington", 4), ("obama", 7), ("rose_leslie", 3),
    ]  # fmt: skip
    assert noise == ["alex_lacamoire", "alex_lacamoire", "stranger-a", "stranger-b"]
    for faces in clusters.values():
        assert len({f.split(":")[0] for f in faces}) == len(faces)  # one face per photo
    # Every cluster's representative is one of its own faces; Chroma mirrors the ledger.
    for r in lib.ledger.query("SELECT cluster_id, size, representative FROM clusters"):
        assert r["representative"] in clusters[r["cluster_id"]]
        assert r["size"] == len(clusters[r["cluster_id"]])
    mirrored = chroma_clusters(lib)
    ledger_side = {f: str(c) for c, fs in clusters.items() for f in fs}
    assert mirrored == {f: ledger_side.get(f, "") for f in lib.truth}


def test_named_people_take_their_later_faces_and_a_rerun_changes_nothing(
    tmp_path: Path, models: ModelRegistry, shared_photos: Path
) -> None:
    lib = library(tmp_path, models)
    lib.cluster(lib.ingest("mixed", photos(shared_photos, "mixed"), shared_photos))
    clusters = lib.clusters()
    # Only obama has enough faces in this batch alone (5 of them).
    assert [sorted({lib.truth[f] for f in fs}) for fs in clusters.values()] == [["obama"]]
    (obama_cluster,) = clusters
    person = name_cluster(lib.ledger, lib.store, lib.config, obama_cluster, "Barack Obama")
    assert person.faces == 5

    later = lib.ingest("people", photos(shared_photos, "people"), shared_photos)
    said = lib.cluster(later)
    assert said[1] == "matching 9 faces to 1 named people"
    rows = lib.ledger.query(
        "SELECT f.face_id, p.name FROM faces f LEFT JOIN people p USING(person_id)"
        " WHERE f.batch_id=?",
        (later.batch_id,),
    )
    named = {r["face_id"] for r in rows if r["name"] == "Barack Obama"}
    assert named == {f for f in (r["face_id"] for r in rows) if lib.truth[f] == "obama"}
    assert len(named) == 2
    meta = lib.store.get_faces(ids=sorted(named))
    assert {m["person"] for m in meta.metadatas} == {"Barack Obama"}
    # kit, biden and rose now reach three faces with the pool's earlier ones.
    who = sorted(sorted({lib.truth[f] for f in fs}) for c, fs in lib.clusters().items())
    assert who == [["biden"], ["kit_harington"], ["obama"], ["rose_leslie"]]

    before = lib.ledger.query("SELECT face_id, cluster_id, person_id FROM faces ORDER BY face_id")
    count = lib.ledger.query("SELECT COUNT(*) n, MAX(cluster_id) m FROM clusters")[0]
    lib.cluster(later)  # a retried batch: nothing new, no new cluster, no id changes
    after = lib.ledger.query("SELECT face_id, cluster_id, person_id FROM faces ORDER BY face_id")
    assert [tuple(r) for r in after] == [tuple(r) for r in before]
    assert tuple(lib.ledger.query("SELECT COUNT(*) n, MAX(cluster_id) m FROM clusters")[0]) == (
        tuple(count)
    )


def test_a_crash_between_the_ledger_and_the_mirror_heals_on_rerun(
    tmp_path: Path, models: ModelRegistry, shared_photos: Path
) -> None:
    lib = library(tmp_path, models)
    batch = lib.ingest("mixed", photos(shared_photos, "mixed"), shared_photos)
    lib.cluster(batch)
    good = chroma_clusters(lib)
    assert sum(1 for c in good.values() if c) == 5
    # What Chroma holds if the daemon died right after the ledger commit.
    ids = sorted(lib.truth)
    lib.store.update_faces(ids, [{"cluster": "", "person": ""} for _ in ids])
    said = lib.cluster(batch)
    assert said[-1] == "checking the face index"
    assert chroma_clusters(lib) == good


def stranger_batch(lib: Library, n: int, seed: int) -> BatchInfo:
    """n faces of n different people nobody will see again.

    Synthetic vectors (random unit vectors are as unlike each other as two
    strangers), written the way the faces phase writes real ones: the pool
    test needs more noise faces than the shared photos hold.
    """
    rng = np.random.default_rng(seed)
    shas = [hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)]
    bid = lib.ledger.claims.reserve_batch(f"strangers{seed}", "folder", ["x"])
    lib.ledger.claims.finish_claim(
        bid, [FileEntry(f"{i}.jpg", s, 1, "jpeg") for i, s in enumerate(shas)], [], ["faces"]
    )
    vectors = rng.standard_normal((n, lib.faces.analyzer.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"{s}:0" for s in shas]
    meta = {"batch_id": bid, "person": "", "cluster": "", "suggested_person": ""}
    lib.store.upsert_faces(ids, vectors, [{**meta, "image_id": s} for s in shas])
    images = {r["sha256"]: r["image_id"] for r in lib.ledger.query("SELECT * FROM images")}
    for f, s in zip(ids, shas, strict=True):
        lib.ledger.faces.add(bid, images[s], s, [NewFace(f, 0.8, 900.0)])
    lib.truth.update({f: "stranger" for f in ids})
    return BatchInfo(bid, f"strangers{seed}", Path("x"))


def test_the_pool_is_bounded_and_a_full_recluster_finds_the_rest(
    tmp_path: Path, models: ModelRegistry, shared_photos: Path
) -> None:
    lib = library(tmp_path, models, pool_max=10)
    lib.cluster(lib.ingest("people", photos(shared_photos, "people"), shared_photos))
    lib.cluster(stranger_batch(lib, 12, seed=1))
    lib.cluster(lib.ingest("mixed", photos(shared_photos, "mixed"), shared_photos))
    # The pool holds the 10 newest noise faces (strangers), so the people batch's
    # faces are out of reach: only obama, with 5 faces in "mixed", forms a cluster.
    clusters = lib.clusters()
    assert [sorted({lib.truth[f] for f in fs}) for fs in clusters.values()] == [["obama"]]
    (obama,) = clusters

    result = recluster_all(lib.ledger, lib.store, lib.config)
    assert (result.kept, result.created, result.removed) == (1, 3, 0)
    clusters = lib.clusters()
    who = {cid: sorted({lib.truth[f] for f in fs}) for cid, fs in clusters.items()}
    assert who[obama] == ["obama"] and len(clusters[obama]) == 7  # the id survived
    assert sorted(who.values()) == [["biden"], ["kit_harington"], ["obama"], ["rose_leslie"]]
    mirrored = chroma_clusters(lib)
    assert all(mirrored[f] == str(c) for c, fs in clusters.items() for f in fs)
