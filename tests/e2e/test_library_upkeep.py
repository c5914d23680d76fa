"""Keeping a library right, against a running daemon: `imgtrain reindex` and `queue remove`.

The daemon is the real subprocess; the commands run in-process (`main`) on
its config, as a person runs them beside it, and every check reads the
daemon's own ledger and ChromaDB.
"""

from __future__ import annotations

import os
import shutil
import sys
from io import StringIO
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
import yaml

from daemon.ledger.rows import unblob
from tests.commands import cli, cli_json
from tests.conftest import clip_section, make_jpeg, write_config
from tests.e2e.conftest import Daemon
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e


def chroma(d: Daemon) -> Any:
    """The daemon's ChromaDB, opened as the commands open it (one client per path and settings)."""
    from chromadb.config import Settings

    return chromadb.PersistentClient(
        path=str(d.data / "chroma"), settings=Settings(anonymized_telemetry=False)
    )


def collection(d: Daemon, name: str) -> dict[str, dict]:
    """{id: metadata} of a collection, read straight from the daemon's ChromaDB."""
    col = chroma(d).get_collection(name)
    got = col.get(include=["metadatas"])
    return dict(zip(got["ids"], got["metadatas"], strict=True))


def library_photos(d: Daemon) -> set[str]:
    rows = d.ledger().query(
        "SELECT DISTINCT i.sha256 FROM images i JOIN image_phases p USING(image_id)"
        " WHERE p.phase='embedding' AND p.state='done'"
    )
    return {r["sha256"] for r in rows}


# -- imgtrain reindex ----------------------------------------------------------------------
def test_reindex_with_another_model_while_folders_arrive_survives_sigkill(
    daemon_factory, tmp_path: Path, tiny_clip_config: Path, tiny_clip24_config: Path, capsys
) -> None:
    d: Daemon = daemon_factory(phases=["embedding"], clip={"batch_size": 2}, decode={"workers": 1})
    old, new = f"{tiny_clip_config.stem}/random", f"{tiny_clip24_config.stem}/random"
    for i in range(60):
        make_jpeg(tmp_path / "first" / f"p{i:02d}.jpg", size=(640, 480), seed=i)
    for i in range(8):
        make_jpeg(tmp_path / "second" / f"s{i}.jpg", size=(640, 480), seed=100 + i)
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    os.rename(tmp_path / "first", d.inbox / "first")
    d.wait_idle_with(completed=1, timeout=180)
    assert cli_json(capsys, d, "search", "a cat", "-n", "3")["model"] == old

    # The config names another architecture; the daemon goes on with what it loaded.
    cfg = yaml.safe_load(d.config_path.read_text())
    cfg["clip"] = {**clip_section(tiny_clip24_config), "batch_size": 2}
    write_config(d.config_path, cfg)
    code, out, _ = cli(capsys, d, "search", "a cat")
    assert code == 0 and "10 best of 60 photos" in out  # still the old model
    assert cli(capsys, d, "queue", "pause")[0] == 0  # hold the daemon where the test wants it
    code, out, _ = cli(capsys, d, "reindex")
    assert code == 0
    assert out.startswith(f"re-indexing 60 photos with {new} in the background; search uses {old}")
    running = cli_json(capsys, d, "reindex")
    assert (running["action"], running["model"], running["active"]) == ("running", new, old)
    assert running["daemon_running"] is True

    os.rename(tmp_path / "second", d.inbox / "second")  # a folder arrives meanwhile
    d.wait_status(lambda s: s["queue"]["paused"] == 1, 60, "the folder queued, held by pause")
    assert cli(capsys, d, "queue", "resume")[0] == 0
    d.wait_idle_with(completed=2, timeout=120)
    collection_b = d.ledger().clip_models.get(new).collection
    # The new batch went into both collections; the re-index is under way between batches.
    assert len(set(collection(d, "images"))) == 68
    wait_for(lambda: _done(d) >= 20, 120, "the re-index to get going")
    assert cli(capsys, d, "queue", "pause")[0] == 0
    held = d.wait_status(
        lambda s: s["reindex"] is not None and s["message"].startswith("Idle: watching"),
        30,
        "the re-index to stop between chunks",
    )
    job = d.ledger().reindexes.last()
    assert job.state == "running" and job.done < job.total == 68, "finished before the kill"
    view = held["reindex"]
    assert (view["model"], view["from_model"], view["state"]) == (new, old, "running")
    assert 0 < view["percentage"] < 100 and view["total"] == 68
    code, out, _ = cli(capsys, d, "status")
    assert f"Re-index to {new}: " in out and f"search uses {old}" in out
    during = cli_json(capsys, d, "search", "a cat", "-n", "5")
    assert during["model"] == old and during["library_images"] == 68
    assert during["reindex"]["model"] == new and len(during["results"]) == 5

    d.kill()  # SIGKILL in the middle of the re-index
    stored = collection(d, collection_b)
    assert 8 < len(stored) < 68
    assert cli_json(capsys, d, "search", "a cat", "-n", "2")["model"] == old  # daemon down
    d.start()
    assert cli(capsys, d, "queue", "resume")[0] == 0
    final = d.wait_status(
        lambda s: s["reindex"] is not None and s["reindex"]["state"] == "completed",
        180,
        "the re-index to complete",
    )
    assert final["reindex"]["percentage"] == 100 and final["reindex"]["done"] == 68

    after = collection(d, collection_b)
    assert set(after) == library_photos(d) and len(after) == 68  # every photo, once
    for sha, meta in stored.items():  # nothing stored before the kill was embedded again
        assert after[sha]["indexed_at"] == meta["indexed_at"]
    job = d.ledger().reindexes.last()
    assert job.embedded == 60 and job.unreadable == 0  # the 8 new ones came with their batch
    assert {m["model"] for m in after.values()} == {new}

    found = cli_json(capsys, d, "search", "a cat", "-n", "3")
    assert (found["model"], found["collection"], found["reindex"]) == (new, collection_b, None)
    assert len(found["results"]) == 3
    code, out, _ = cli(capsys, d, "reindex")
    assert out.strip() == (
        f"the library is indexed with {new} already; the vectors of {old} are kept"
        " (--drop-old deletes them)"
    )
    dropped = cli_json(capsys, d, "reindex", "--drop-old")
    assert (dropped["action"], dropped["dropped"]) == ("dropped", [old])
    names = {c.name for c in chroma(d).list_collections()}
    assert "images" not in names and collection_b in names
    assert d.terminate() == 0


def _done(d: Daemon) -> int:
    job = d.ledger().reindexes.last()
    return job.done if job is not None else 0


# -- imgtrain queue remove -------------------------------------------------------------------
def fresh_clusters(d: Daemon) -> None:
    """Every cluster's size and centroid equal a fresh computation from its faces' vectors."""
    ledger = d.ledger()
    faces = chroma(d).get_collection("faces")
    for c in ledger.query("SELECT cluster_id, size, centroid, representative FROM clusters"):
        members = [
            r["face_id"]
            for r in ledger.query(
                "SELECT face_id FROM faces WHERE cluster_id=?", (c["cluster_id"],)
            )
        ]
        assert c["size"] == len(members) > 0, dict(c)
        assert c["representative"] in members
        got = faces.get(ids=members, include=["embeddings"])
        vectors = np.asarray(got["embeddings"], dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        assert np.allclose(unblob(c["centroid"]), vectors.mean(axis=0), atol=1e-5)


def test_queue_remove_takes_a_batch_and_its_faces_back_out(
    daemon_factory, tmp_path: Path, shared_photos: Path, capsys, monkeypatch
) -> None:
    d: Daemon = daemon_factory(clip={"batch_size": 4}, decode={"workers": 1})
    src = tmp_path / "src"
    for photo in sorted(shared_photos.glob("people/*/*")):
        dest = src / "people" / f"{photo.parent.name}-{photo.name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, dest)
    shutil.copytree(shared_photos / "mixed", src / "mixed")
    make_jpeg(src / "extra" / "garden.jpg", seed=7)
    shutil.copy(shared_photos / "people" / "obama" / "obama.jpg", src / "extra" / "copy.jpg")
    d.start()
    d.wait_status(lambda s: s["status"] == "idle", 90, "start")
    for n, name in enumerate(("people", "mixed", "extra"), 1):
        os.rename(src / name, d.inbox / name)
        d.wait_idle_with(completed=n, timeout=180)

    # The shared photos: obama 7 faces, kit_harington 4, biden 4, rose_leslie 3.
    clusters = cli_json(capsys, d, "people")["clusters"]
    assert [c["faces"] for c in clusters] == [7, 4, 4, 3]
    obama, rose = clusters[0]["cluster_id"], clusters[3]["cluster_id"]
    assert cli(capsys, d, "people", "name", str(obama), "Obama")[0] == 0
    assert cli(capsys, d, "people", "name", str(rose), "Rose")[0] == 0
    copy = d.ledger().query("SELECT sha256, image_id FROM images WHERE rel_path='copy.jpg'")[0]

    gone = cli_json(capsys, d, "queue", "remove", "1")
    assert (gone["batch_id"], gone["name"], gone["state"]) == (1, "people", "removed")
    r = gone["removed"]
    # obama.jpg has a copy in batch 3: its vector and face stay, now that copy's.
    assert (r["images"], r["faces"], r["image_vectors"], r["face_vectors"], r["shared"]) == (
        9,
        8,
        8,
        8,
        1,
    )
    assert (r["clusters_changed"], r["clusters_removed"], r["people_changed"]) == (4, 0, 2)
    assert gone["photos_deleted"] is False and Path(r["path"]).is_dir()  # photos stay

    ledger = d.ledger()
    assert ledger.query("SELECT COUNT(*) n FROM faces WHERE batch_id=1")[0]["n"] == 0
    assert ledger.query("SELECT COUNT(*) n FROM images WHERE batch_id=1")[0]["n"] == 0
    owner = ledger.query("SELECT duplicate_of FROM images WHERE image_id=?", (copy["image_id"],))
    assert owner[0]["duplicate_of"] is None
    images, faces = collection(d, "images"), collection(d, "faces")
    assert not [m for m in images.values() if m["batch_id"] == 1]
    assert not [m for m in faces.values() if m["batch_id"] == 1]
    assert images[copy["sha256"]]["path"].endswith("-extra/copy.jpg")
    assert faces[f"{copy['sha256']}:0"]["batch_id"] == 3
    assert len(images) == 11 and len(faces) == 14
    fresh_clusters(d)
    people = {p["name"]: p for p in cli_json(capsys, d, "people")["people"]}
    assert (people["Obama"]["faces"], people["Rose"]["faces"]) == (6, 1)
    _prototype_is_the_mean(d, "Obama")

    code, out, _ = cli(capsys, d, "queue")
    row = out.splitlines()[1].split()
    assert row[:5] == ["1", "removed", "people", "9", "8"]
    assert "batch 1 removed " in out and "8 image vectors and 8 face vectors deleted" in out

    # Another removal leaves Rose with no face: named, empty, no prototype.
    code, out, _ = cli(capsys, d, "queue", "remove", "2")
    assert code == 0 and out.startswith("batch 2 'mixed' removed: 9 images, 13 faces;")
    assert "Its photos stay in " in out
    people = {p["name"]: p for p in cli_json(capsys, d, "people")["people"]}
    assert (people["Obama"]["faces"], people["Rose"]["faces"]) == (1, 0)
    assert d.ledger().query("SELECT prototype FROM people WHERE name='Rose'")[0][0] is None
    fresh_clusters(d)
    assert set(collection(d, "faces")) == {f"{copy['sha256']}:0"}

    # A running batch must be cancelled first.
    for i in range(40):
        make_jpeg(tmp_path / "slow" / f"p{i:02d}.jpg", size=(480, 360), seed=300 + i)
    os.rename(tmp_path / "slow", d.inbox / "slow")
    d.wait_status(lambda s: (s["batch_step"] or 0) >= 2, 120, "the batch under way")
    assert cli(capsys, d, "queue", "pause")[0] == 0
    d.wait_status(lambda s: s["status"] == "paused", 30, "paused")
    code, _, err = cli(capsys, d, "queue", "remove", "4")
    assert code == 1 and "INVALID_STATE: batch 4 is running" in err
    assert "imgtrain queue cancel 4" in err
    assert cli(capsys, d, "queue", "cancel", "4")[0] == 0
    d.wait_status(lambda s: s["queue"]["cancelled"] == 1, 30, "the batch cancelled")
    assert cli(capsys, d, "queue", "resume")[0] == 0

    folder = Path(cli_json(capsys, d, "queue")["batches"][3]["path"])
    monkeypatch.setattr(sys, "stdin", StringIO("n\n"))
    code, _, err = cli(capsys, d, "queue", "remove", "4", "--delete-photos")
    assert code == 1 and "delete its photos" in err and "nothing removed" in err
    assert cli_json(capsys, d, "queue")["batches"][3]["state"] == "cancelled"
    done = cli_json(capsys, d, "queue", "remove", "4", "--delete-photos", "--yes")
    assert done["photos_deleted"] is True and not folder.exists()
    assert done["removed"]["photos_deleted"] == done["removed"]["images"] == 40
    assert set(collection(d, "images")) == {copy["sha256"], *_garden(d)}
    fresh_clusters(d)
    d.wait_status(lambda s: s["totals"]["batches"] == 1, 30, "removed batches out of the totals")
    assert d.terminate() == 0


def _garden(d: Daemon) -> set[str]:
    rows = d.ledger().query("SELECT sha256 FROM images WHERE rel_path='garden.jpg'")
    return {r["sha256"] for r in rows}


def _prototype_is_the_mean(d: Daemon, name: str) -> None:
    ledger = d.ledger()
    proto = unblob(ledger.query("SELECT prototype FROM people WHERE name=?", (name,))[0][0])
    ids = [
        r["face_id"]
        for r in ledger.query(
            "SELECT f.face_id FROM faces f JOIN people p USING(person_id) WHERE p.name=?", (name,)
        )
    ]
    faces = chroma(d).get_collection("faces")
    vectors = np.asarray(faces.get(ids=ids, include=["embeddings"])["embeddings"], np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(proto, vectors.mean(axis=0), atol=1e-5)
