"""`imgtrain queue remove` against a real ledger and a real ChromaDB, without a daemon.

Batches are recorded through the Ledger calls the daemon makes; their vectors
are synthetic, written into two image collections (as during a re-index) and
`faces`. What a removal does to real faces, clusters and people, with the
daemon running, is tests/e2e/test_library_upkeep.py.
"""

from __future__ import annotations

import json
import sys
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

from daemon.config import load_config
from daemon.ledger import removal
from daemon.ledger.ledger import Ledger
from daemon.store.chroma import IMAGES, Store
from daemon.vocab import BatchState
from tests.conftest import write_config
from tests.integration.test_cli_queue import claim, cli, process

OTHER = "images-other-model-00000000"


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Ledger, Store]:
    cfg = write_config(
        tmp_path / "config.yaml",
        {"inbox_dir": "inbox", "data_dir": "data", "status_dir": "status"},
    )
    store = Store(load_config(cfg, environ={}))
    for name in (IMAGES, OTHER):
        store.open_images(name, 4, name=name)
    store.open_faces("faces-model", 4)
    return cfg, Ledger(tmp_path / "data" / "ledger.sqlite3"), store


def index(store: Store, ledger: Ledger, bid: int) -> None:
    """The vectors the phases would have stored for a processed batch."""
    rows = ledger.query("SELECT sha256, rel_path FROM images WHERE batch_id=?", (bid,))
    shas = [r["sha256"] for r in rows if r["sha256"] not in store.image_ids_present([r["sha256"]])]
    vectors = np.eye(4, dtype=np.float32)[np.arange(len(shas)) % 4] + 0.1
    for name in (IMAGES, OTHER):
        store.upsert_images(shas, vectors, [{"batch_id": bid}] * len(shas), name=name)
    faces = [
        r["face_id"] for r in ledger.query("SELECT face_id FROM faces WHERE batch_id=?", (bid,))
    ]
    if faces:
        store.upsert_faces(
            faces, np.ones((len(faces), 4), np.float32), [{"batch_id": bid}] * len(faces)
        )


def test_only_finished_batches_can_be_removed(setup, capsys) -> None:
    cfg, ledger, _ = setup
    running = claim(ledger, "running", 2)
    ledger.start_batch(running)
    waiting = claim(ledger, "waiting", 1)
    code, _, err = cli(capsys, cfg, "queue", "remove", str(running))
    assert code == 1 and f"INVALID_STATE: batch {running} is running" in err
    assert f"imgtrain queue cancel {running}" in err
    code, _, err = cli(capsys, cfg, "queue", "remove", str(waiting))
    assert code == 1 and f"batch {waiting} is waiting: it has not been processed yet" in err
    code, _, err = cli(capsys, cfg, "queue", "remove", "99")
    assert code == 1 and "NOT_FOUND: there is no batch 99" in err
    assert {b.state for b in ledger.batches()} == {BatchState.RUNNING, BatchState.WAITING}


def test_a_removed_batch_leaves_no_row_or_vector_and_its_copies_take_over(setup, capsys) -> None:
    cfg, ledger, store = setup
    keep = claim(ledger, "keep", 2)
    process(ledger, keep, faces=1)
    ledger.finish_batch(keep, BatchState.COMPLETED)
    index(store, ledger, keep)
    gone = claim(ledger, "gone", 3)
    process(ledger, gone, faces=2)
    ledger.finish_batch(gone, BatchState.COMPLETED)
    index(store, ledger, gone)
    later = claim(ledger, "later", 1, prefix="gone")  # a copy of gone's first photo
    process(ledger, later)
    ledger.finish_batch(later, BatchState.COMPLETED)
    assert ledger.query("SELECT duplicate_of FROM images WHERE batch_id=?", (later,))[0][0]

    code, out, _ = cli(capsys, cfg, "queue", "remove", str(gone), "--json")
    data = json.loads(out)
    assert code == 0 and data["state"] == "removed" and data["photos_deleted"] is False
    r = data["removed"]
    assert (r["images"], r["faces"], r["image_vectors"], r["face_vectors"], r["shared"]) == (
        3,
        1,
        2,
        1,
        1,
    )
    # Nothing of the batch is left: rows, phases, faces, vectors in either image collection.
    assert ledger.query("SELECT COUNT(*) FROM images WHERE batch_id=?", (gone,))[0][0] == 0
    assert ledger.query("SELECT COUNT(*) FROM faces WHERE batch_id=?", (gone,))[0][0] == 0
    assert ledger.query("SELECT COUNT(*) FROM batch_phases WHERE batch_id=?", (gone,))[0][0] == 0
    for name in (IMAGES, OTHER):
        assert store.image_ids_present(["gone-1", "gone-2"], name=name) == set()
        meta = store.get_images(["gone-0"], name=name)[0]["metadata"]
        assert meta["batch_id"] == later and meta["path"].endswith("-later/0.jpg")
    # The copy is the original now, with the results and the face of the removed one.
    copy = ledger.query("SELECT image_id, duplicate_of FROM images WHERE batch_id=?", (later,))[0]
    assert copy["duplicate_of"] is None
    phases = ledger.query("SELECT state FROM image_phases WHERE image_id=?", (copy["image_id"],))
    assert {p["state"] for p in phases} == {"done"}
    face = ledger.query("SELECT image_id, batch_id FROM faces WHERE face_id='gone-0:0'")[0]
    assert (face["image_id"], face["batch_id"]) == (copy["image_id"], later)
    assert store.get_faces(ids=["gone-0:0"]).metadatas[0]["batch_id"] == later
    assert store.get_faces(ids=["gone-1:0"]).ids == []
    assert ledger.queue_counts()["removed"] == 1
    # What a re-index under way checks after each chunk it stored.
    assert ledger.reindexes.held(["gone-0", "gone-1", "keep-0"]) == {"gone-0", "keep-0"}

    code, out, _ = cli(capsys, cfg, "queue")
    lines = out.splitlines()
    assert lines[2].split()[:5] == [str(gone), "removed", "gone", "3", "1"]
    assert f"batch {gone} removed " in out and "2 image vectors and 1 face vectors deleted" in out
    code, out, _ = cli(capsys, cfg, "queue", "--json")
    row = json.loads(out)["batches"][1]
    assert row["state"] == "removed" and row["removed"]["shared"] == 1
    code, _, err = cli(capsys, cfg, "queue", "remove", str(gone))
    assert code == 1 and "already removed" in err


def test_photos_go_only_when_confirmed(setup, capsys, monkeypatch) -> None:
    cfg, ledger, _ = setup
    bid = claim(ledger, "trip", 2)
    folder = cfg.parent / "data" / "batches" / f"{bid:06d}-trip"
    folder.mkdir(parents=True)
    (folder / "0.jpg").write_bytes(b"photo")
    ledger.claims.set_batch_path(bid, folder)
    process(ledger, bid)
    ledger.finish_batch(bid, BatchState.COMPLETED)

    monkeypatch.setattr(sys, "stdin", StringIO("\n"))
    code, _, err = cli(capsys, cfg, "queue", "remove", str(bid), "--delete-photos")
    assert code == 1 and f"delete its photos in {folder} for good? [y/N]" in err
    assert ledger.batch(bid).state == BatchState.COMPLETED and folder.is_dir()

    monkeypatch.setattr(sys, "stdin", StringIO("y\n"))
    code, out, _ = cli(capsys, cfg, "queue", "remove", str(bid), "--delete-photos")
    assert code == 0 and f"Its photos were deleted from {folder}." in out
    assert not folder.exists()
    code, out, _ = cli(capsys, cfg, "queue")
    assert "photos deleted" in out


def test_an_interrupted_removal_is_finished_by_running_it_again(setup, capsys) -> None:
    cfg, ledger, store = setup
    bid = claim(ledger, "half", 2)
    process(ledger, bid, faces=2)
    ledger.finish_batch(bid, BatchState.COMPLETED)
    index(store, ledger, bid)
    plan = removal.begin(ledger, bid)  # then the command died
    store.delete_images(plan.drop_vectors[:1])
    code, out, _ = cli(capsys, cfg, "queue")
    assert f"batch {bid} removing: interrupted; run `imgtrain queue remove {bid}`" in out

    code, out, _ = cli(capsys, cfg, "queue", "remove", str(bid))
    assert code == 0 and out.startswith(f"batch {bid} 'half' removed: 2 images, 2 faces;")
    assert store.count_images() == store.count_images(OTHER) == 0
    assert store.count_faces() == 0
