"""Real photos, real face models, a running daemon: faces found, grouped into people, named.

Expected faces (counted by looking at each photo; `../shared/photos/README.md`
agrees): one per photo in people/, and in mixed/ two in kit_with_rose.jpg
(rose left, kit right), two in two_people.jpg (obama left, biden right), three
in obama_and_biden.jpg (biden, obama, and a child in the background), one in each
other photo. Faces are numbered left to right, so `<sha>:<n>` maps to a person.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image

from daemon.config import load_config
from daemon.people import operations as people
from daemon.store.chroma import Store
from tests.e2e.conftest import Daemon

LABELS: dict[str, list[str]] = {
    "people/alex_lacamoire/img1.jpg": ["alex"],
    "people/biden/biden.jpg": ["biden"],
    "people/biden/biden2.jpg": ["biden"],
    "people/kit_harington/john1.jpeg": ["kit"],
    "people/kit_harington/john2.jpeg": ["kit"],
    "people/obama/obama.jpg": ["obama"],
    "people/obama/obama2.jpg": ["obama"],
    "people/rose_leslie/img1.jpg": ["rose"],
    "people/rose_leslie/img2.jpg": ["rose"],
    "mixed/alex_lacamoire1.jpg": ["alex"],
    "mixed/johnsnow_test1.jpg": ["kit"],
    "mixed/kit_with_rose.jpg": ["rose", "kit"],
    "mixed/obama1.jpg": ["obama"],
    "mixed/obama3.jpg": ["obama"],
    "mixed/obama_partial_face.jpg": ["obama"],
    "mixed/obama_and_biden.jpg": ["biden", "obama", "child"],
    "mixed/two_people.jpg": ["obama", "biden"],
    "mixed/lin-manuel-miranda.png": ["lin"],
}


def _face_labels(d: Daemon) -> dict[str, tuple[str, int | None, int | None]]:
    """face_id -> (true identity, cluster_id, person_id), from the ledger."""
    rows = d.ledger().query(
        "SELECT f.face_id, f.cluster_id, f.person_id, i.rel_path, b.name AS batch"
        " FROM faces f JOIN images i USING(image_id) JOIN batches b ON b.batch_id = i.batch_id"
    )
    out = {}
    for r in rows:
        key = (
            f"{r['batch']}/{r['rel_path']}" if r["batch"] == "mixed" else f"people/{r['rel_path']}"
        )
        n = int(r["face_id"].rsplit(":", 1)[1])
        out[r["face_id"]] = (LABELS[key][n], r["cluster_id"], r["person_id"])
    return out


def test_faces_found_grouped_and_named_people_recognised_later(
    daemon_factory, shared_photos: Path, tmp_path: Path
) -> None:
    d: Daemon = daemon_factory()
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    shutil.copytree(shared_photos / "people", tmp_path / "people")
    os.rename(tmp_path / "people", d.inbox / "people")
    d.wait_idle_with(completed=1, timeout=180)
    shutil.copytree(shared_photos / "mixed", tmp_path / "mixed")
    os.rename(tmp_path / "mixed", d.inbox / "mixed")
    status = d.wait_idle_with(completed=2, timeout=180)

    # Every face in the photos is found, per photo.
    per_image = Counter()
    for r in d.ledger().query(
        "SELECT i.rel_path, b.name FROM faces f JOIN images i USING(image_id)"
        " JOIN batches b ON b.batch_id = i.batch_id"
    ):
        key = f"mixed/{r['rel_path']}" if r["name"] == "mixed" else f"people/{r['rel_path']}"
        per_image[key] += 1
    assert per_image == {k: len(v) for k, v in LABELS.items()}
    assert status["totals"]["faces"] == 22
    config = load_config(d.config_path, environ={})
    store = Store(config)
    assert store.count_faces() == 22
    assert store.count_images() == 18

    # Same person, same cluster; different people, different clusters.
    labels = _face_labels(d)
    clusters: dict[int, list[str]] = {}
    for who, cluster, _person in labels.values():
        if cluster is not None:
            clusters.setdefault(cluster, []).append(who)
    purity = {c: Counter(m).most_common(1)[0][1] / len(m) for c, m in clusters.items()}
    noise = sum(1 for _who, c, _p in labels.values() if c is None)
    print(f"clusters: {clusters}; purity {purity}; noise {noise} of {len(labels)} faces")
    assert all(p == 1.0 for p in purity.values()), clusters
    majority = {c: Counter(m).most_common(1)[0][0] for c, m in clusters.items()}
    assert len(set(majority.values())) == len(majority), "one person split over clusters"
    # With min_cluster_size 3, the four people with 3+ faces can form clusters.
    assert set(majority.values()) <= {"obama", "kit", "biden", "rose"}
    assert {"obama", "kit", "biden"} <= set(majority.values())

    # Name the clusters; later photos of those people are then assigned to them.
    named = {
        who: people.name_cluster(d.ledger(), store, config, c, who.title())
        for c, who in majority.items()
    }
    later = tmp_path / "later"
    later.mkdir()
    for src, dst in (
        ("people/obama/obama.jpg", "o.jpg"),
        ("people/biden/biden2.jpg", "b.jpg"),
        ("people/kit_harington/john2.jpeg", "k.jpg"),
    ):
        # Mirrored, so the content (and SHA-256) is new: not a duplicate.
        Image.open(shared_photos / src).transpose(Image.FLIP_LEFT_RIGHT).save(later / dst)
    os.rename(later, d.inbox / "later")
    d.wait_idle_with(completed=3, timeout=180)
    rows = d.ledger().query(
        "SELECT i.rel_path, p.name FROM faces f JOIN images i USING(image_id)"
        " JOIN batches b ON b.batch_id = i.batch_id LEFT JOIN people p ON p.person_id = f.person_id"
        " WHERE b.name = 'later'"
    )
    got = {r["rel_path"]: r["name"] for r in rows}
    want = {"o.jpg": "Obama", "b.jpg": "Biden", "k.jpg": "Kit"}
    assert {k: v for k, v in want.items() if v.lower() in named} == {
        k: got.get(k) for k, v in want.items() if v.lower() in named
    }
    assert d.terminate() == 0
