"""Re-indexing in-process: a real ledger, ChromaDB, two tiny CLIP architectures, real JPEGs.

A library is indexed with one architecture (32-d), then the config names
another (24-d). Batches run through the real pipeline with the real embedding
phase; the re-index through the real `Reindexer`, stopped and restarted at
chosen chunks. The daemon around it (scheduling, SIGKILL, the status file) is
tests/e2e/test_library_upkeep.py.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from daemon.commands.reindex import request
from daemon.config import Config
from daemon.errors import ModelMismatch
from daemon.ledger.faces import NewFace
from daemon.ledger.ledger import Ledger
from daemon.models import ModelRegistry
from daemon.people.photos import mirror_photos
from daemon.phases.base import PhaseContext
from daemon.phases.control import Control
from daemon.phases.pipeline import Pipeline
from daemon.phases.registry import build_phases
from daemon.phases.reindex import Reindexer
from daemon.service.reindexing import Reindexing
from daemon.status.progress import Progress
from daemon.status.reindex import ReindexTracker
from daemon.store import library
from daemon.store.chroma import IMAGES, Store
from daemon.vocab import BatchState, ClipModelState, FileEntry, ReindexState
from tests.conftest import clip_section, make_jpeg

CHUNK = 2


class Lib:
    """A library directory; `use(arch)` is what editing clip in the config and restarting does."""

    def __init__(self, tmp: Path, arch: Path) -> None:
        self.tmp = tmp
        self.ledger = Ledger(tmp / "data" / "ledger.sqlite3")
        self.use(arch)

    def use(self, arch: Path) -> None:
        clip = {**clip_section(arch), "batch_size": CHUNK}
        self.config = Config.model_validate(
            {"data_dir": self.tmp / "data", "phases": ["embedding"], "clip": clip,
             "decode": {"workers": 1}}
        )  # fmt: skip
        self.store = Store(self.config)
        self.ctx = PhaseContext(self.config, self.store, self.ledger, ModelRegistry(self.config))

    def pipeline(self) -> Pipeline:
        image, batch = build_phases(self.config)
        progress = Progress(data_dir=str(self.tmp), costs={}, clock=lambda: 0.0)
        control = Control(self.ledger, threading.Event(), progress, lambda: None, 0.01)
        pipeline = Pipeline(self.ctx, image, batch, progress, control, lambda: None)
        pipeline.setup()
        return pipeline

    def add(self, name: str, seeds: range) -> set[str]:
        """A folder of photos, claimed and run through the pipeline; their SHA-256s."""
        home = self.tmp / "batches" / name
        files = []
        for s in seeds:
            path = make_jpeg(home / f"{s}.jpg", size=(96, 72), seed=s)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            files.append(FileEntry(path.name, digest, path.stat().st_size, "jpeg"))
        bid = self.ledger.claims.reserve_batch(name, "folder", [name])
        self.ledger.claims.set_batch_path(bid, home)
        self.ledger.claims.finish_claim(bid, files, [], ["embedding"])
        self.pipeline().run(self.ledger.start_batch(bid))
        self.ledger.finish_batch(bid, BatchState.COMPLETED)
        return {f.sha256 for f in files}

    def reindex(self, stop_after: int | None = None) -> ReindexState | None:
        """Work on the open re-index; stop after `stop_after` chunks (a shutdown, a batch)."""
        job = self.ledger.reindexes.open()
        assert job is not None
        chunks = []

        def give_way() -> bool:
            chunks.append(1)
            return stop_after is not None and len(chunks) > stop_after

        return Reindexer(self.ctx, ReindexTracker(), lambda: None).run(job, give_way)

    def vectors(self, collection: str) -> dict[str, dict]:
        col = self.store._lookup(collection)
        assert col is not None
        got = col.get(include=["metadatas"])
        return dict(zip(got["ids"], got["metadatas"], strict=True))


@pytest.fixture
def lib(tmp_path: Path, tiny_clip_config: Path) -> Lib:
    return Lib(tmp_path, tiny_clip_config)


def test_a_new_model_needs_a_reindex_and_new_batches_then_go_into_both(
    lib: Lib, tiny_clip_config: Path, tiny_clip24_config: Path
) -> None:
    first = lib.add("first", range(5))
    a = library.model_name(lib.config.clip)
    assert lib.ledger.clip_models.active().model == a  # registered on the first run

    lib.use(tiny_clip24_config)
    b = library.model_name(lib.config.clip)
    with pytest.raises(ModelMismatch) as err:
        lib.pipeline()
    assert "imgtrain reindex" in err.value.hint and a in err.value.message

    out = request(lib.ledger, lib.store, lib.config)
    assert (out.action, out.model, out.active) == ("started", b, a)
    assert "re-indexing 5 photos" in out.message
    row = lib.ledger.clip_models.get(b)
    assert row.state == ClipModelState.BUILDING and row.collection == library.collection_for(b)
    # Asked again: how far it is; asked with another model configured: refused.
    assert request(lib.ledger, lib.store, lib.config).action == "running"

    second = lib.add("second", range(100, 103))
    old, new = lib.vectors(IMAGES), lib.vectors(row.collection)
    assert set(old) == first | second and set(new) == second
    assert {m["model"] for m in new.values()} == {b}
    # Search still reads the old collection, with the old model's settings.
    used = library.reader(lib.ledger, lib.config.clip)
    assert used.collection == IMAGES and used.clip.model == tiny_clip_config.stem
    assert used.reindex is not None and used.reindex.model == b


def test_a_stopped_reindex_resumes_without_redoing_a_photo_then_switches(
    lib: Lib, tiny_clip_config: Path, tiny_clip24_config: Path
) -> None:
    photos = lib.add("first", range(9))
    lib.use(tiny_clip24_config)
    request(lib.ledger, lib.store, lib.config)
    b = library.model_name(lib.config.clip)
    collection = lib.ledger.clip_models.get(b).collection

    assert lib.reindex(stop_after=2) is None  # stopped between chunks, as for a batch
    job = lib.ledger.reindexes.open()
    assert (job.embedded, job.done, job.total) == (2 * CHUNK, 2 * CHUNK, 9)
    before = lib.vectors(collection)
    assert len(before) == 2 * CHUNK

    lib.use(tiny_clip24_config)  # a restart: new store, new models
    assert lib.reindex() == ReindexState.COMPLETED
    after = lib.vectors(collection)
    assert set(after) == photos  # every photo, each once (ids are content hashes)
    for sha, meta in before.items():  # the ones done before the stop were not redone
        assert after[sha]["indexed_at"] == meta["indexed_at"]
    job = lib.ledger.reindexes.last()
    assert (job.state, job.embedded, job.done, job.total) == ("completed", 9, 9, 9)
    assert lib.ledger.clip_models.active().model == b
    assert lib.ledger.clip_models.get(library.model_name(lib.config.clip)).state == "active"
    used = library.reader(lib.ledger, lib.config.clip)
    assert (used.collection, used.clip.model, used.reindex) == (
        collection,
        tiny_clip24_config.stem,
        None,
    )
    lib.pipeline()  # the configured model is the active one now: no mismatch

    # Back to the first model: its collection was kept, so only what came since is embedded.
    more = lib.add("later", range(200, 202))  # into the 24-d collection only
    lib.use(tiny_clip_config)
    out = request(lib.ledger, lib.store, lib.config)
    assert out.action == "started" and "(9 already in its collection)" in out.message
    assert lib.reindex() == ReindexState.COMPLETED
    assert lib.ledger.reindexes.last().embedded == 2
    assert set(lib.vectors(IMAGES)) == photos | more
    assert library.reader(lib.ledger, lib.config.clip).collection == IMAGES

    # --drop-old with nothing to re-index deletes the kept collection now.
    out = request(lib.ledger, lib.store, lib.config, drop_old=True)
    assert (out.action, out.dropped) == ("dropped", [b])
    assert collection not in lib.store.image_collections()
    assert lib.ledger.clip_models.get(b).state == ClipModelState.DROPPED


def test_drop_old_deletes_the_old_collection_when_complete_and_cancel_stops(
    lib: Lib, tiny_clip_config: Path, tiny_clip24_config: Path
) -> None:
    lib.add("first", range(4))
    lib.use(tiny_clip24_config)
    out = request(lib.ledger, lib.store, lib.config, drop_old=True)
    assert "then its vectors are deleted" in out.message
    assert lib.reindex() == ReindexState.COMPLETED
    assert IMAGES not in lib.store.image_collections()
    a = library.model_name(lib.config.clip.model_copy(update={"model": tiny_clip_config.stem}))
    assert lib.ledger.clip_models.get(a).state == ClipModelState.DROPPED

    # Back to the dropped model: a full re-index, which --cancel stops.
    lib.use(tiny_clip_config)
    assert request(lib.ledger, lib.store, lib.config).action == "started"
    assert lib.reindex(stop_after=1) is None
    out = request(lib.ledger, lib.store, lib.config, cancel=True)
    assert out.action == "cancelled" and lib.ledger.reindexes.open() is None
    with pytest.raises(ModelMismatch):
        lib.pipeline()  # the config names a model the library is not indexed with


def test_a_chunk_stored_but_not_recorded_is_not_embedded_again(
    lib: Lib, tiny_clip24_config: Path
) -> None:
    photos = lib.add("first", range(6))
    lib.use(tiny_clip24_config)
    request(lib.ledger, lib.store, lib.config)
    collection = lib.ledger.clip_models.get(library.model_name(lib.config.clip)).collection
    assert lib.reindex(stop_after=2) is None
    stored = lib.vectors(collection)
    assert len(stored) == 2 * CHUNK
    # A crash after the second chunk's vectors went in, before the ledger said so.
    second = lib.ledger.reindexes.library_images(0, 10)[CHUNK - 1].image_id
    with lib.ledger.transaction() as conn:
        conn.execute("UPDATE reindexes SET cursor=?, embedded=?, done=?", (second, CHUNK, CHUNK))

    lib.use(tiny_clip24_config)
    assert lib.reindex() == ReindexState.COMPLETED
    after = lib.vectors(collection)
    assert set(after) == photos
    assert all(after[sha]["indexed_at"] == meta["indexed_at"] for sha, meta in stored.items())
    assert lib.ledger.reindexes.last().embedded == 2 * CHUNK  # the first chunk and the last


def test_the_daemon_retries_at_once_when_a_reindex_is_asked_for_after_a_mismatch(
    lib: Lib, tiny_clip24_config: Path
) -> None:
    lib.add("first", range(2))
    lib.use(tiny_clip24_config)
    with pytest.raises(ModelMismatch) as err:
        lib.pipeline()
    driver = Reindexing(
        lib.ledger,
        Progress(data_dir=str(lib.tmp), costs={}),
        lambda: None,
        threading.Event(),
        threading.Event(),
    )
    assert driver.retry_now(err.value) is False  # nothing new: wait for models.retry_seconds
    assert driver.retry_now(None) is False
    request(lib.ledger, lib.store, lib.config)
    assert driver.retry_now(err.value) is True  # `imgtrain reindex` was run: try now
    assert driver.retry_now(err.value) is False  # once
    lib.pipeline()


def test_who_is_in_each_photo_follows_it_into_the_new_models_collection(
    lib: Lib, tiny_clip24_config: Path
) -> None:
    """`search --person` filters on the photos' `people`: a re-index carries them, and a
    person named while it runs reaches the new collection whether or not the photo is in
    it yet."""
    photos = sorted(lib.add("first", range(6)))
    ids = {
        r["sha256"]: r["image_id"] for r in lib.ledger.query("SELECT sha256, image_id FROM images")
    }

    def name(sha: str, who: str) -> int:
        pid = lib.ledger.people.create(who)
        lib.ledger.faces.add(1, ids[sha], sha, [NewFace(f"{sha}:0", 0.9, 400.0)])
        lib.ledger.faces.give_to_person([f"{sha}:0"], pid)
        mirror_photos(lib.ledger, lib.store, [sha])  # what naming a cluster does
        return pid

    ada = name(photos[0], "Ada")
    lib.use(tiny_clip24_config)
    request(lib.ledger, lib.store, lib.config)
    collection = lib.ledger.clip_models.get(library.model_name(lib.config.clip)).collection
    assert lib.reindex(stop_after=1) is None  # one chunk in
    later = [sha for sha in photos if sha not in lib.vectors(collection)]
    assert later, "the re-index had not reached every photo"
    bob = name(later[-1], "Bob")
    assert lib.reindex() == ReindexState.COMPLETED

    named = {photos[0]: [ada], later[-1]: [bob]}
    for col in (IMAGES, collection):
        people = {sha: meta.get("people") for sha, meta in lib.vectors(col).items()}
        assert people == {sha: None for sha in photos} | named
