"""The inbox with real watchdog, a real filesystem and a real SQLite ledger.

Settling is shortened to 1 s and the scanner ticks every 0.2 s. Waiting is
always a poll against a deadline. The only sleeps pace a deliberately slow
copy (the stimulus), never a wait for a result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.config import Config
from daemon.errors import Code, ConfigError
from daemon.ingest.claim import recover_claims
from daemon.ingest.watch import Inbox
from daemon.ledger.ledger import Ledger
from daemon.vocab import Batch, BatchState
from tests.conftest import make_jpeg
from tests.helpers import wait_for

DEADLINE = 20.0


@dataclass
class Harness:
    config: Config
    ledger: Ledger
    queued: list[int] = field(default_factory=list)
    notices: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    inbox: Inbox | None = None

    @property
    def dir(self) -> Path:
        return self.config.inbox_dir

    def on_queued(self, batch_id: int) -> None:
        with self.lock:
            self.queued.append(batch_id)

    def on_notice(self, code: str, message: str, file: str) -> None:
        with self.lock:
            self.notices.append((code, message, file))

    def start(self) -> Inbox:
        self.inbox = Inbox(self.config, self.ledger, self.on_queued, self.on_notice)
        self.inbox.start()
        return self.inbox

    def stop(self) -> None:
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox = None

    def batches(self) -> list[Batch]:
        return self.ledger.batches()

    def wait_batches(self, n: int, what: str) -> list[Batch]:
        def done() -> list[Batch] | None:
            queued = [b for b in self.batches() if b.state == BatchState.WAITING]
            return queued if len(queued) >= n else None

        return wait_for(done, DEADLINE, what)

    def wait_queued(self, ids: list[int], what: str) -> None:
        """The daemon is told of a batch just after the ledger commits it: wait for that."""

        def done() -> bool | None:
            with self.lock:
                return sorted(self.queued) == sorted(ids) or None

        wait_for(done, DEADLINE, what)

    def images(self, batch_id: int) -> list[str]:
        rows = self.ledger.query(
            "SELECT rel_path FROM images WHERE batch_id=? ORDER BY rel_path", (batch_id,)
        )
        return [r["rel_path"] for r in rows]

    def notices_for(self, name: str) -> list[tuple[str, str, str]]:
        with self.lock:
            return [n for n in self.notices if Path(n[2]).name == name]


def make_harness(tmp_path: Path, **inbox: Any) -> Harness:
    settings = {"settle_seconds": 1.0, "scan_interval_seconds": 0.2, "rescan_seconds": 5.0}
    settings.update(inbox)
    config = Config.model_validate(
        {
            "inbox_dir": str(tmp_path / "inbox"),
            "data_dir": str(tmp_path / "data"),
            "status_dir": str(tmp_path / "status"),
            "inbox": settings,
        }
    )
    for d in (config.inbox_dir, config.batches_dir):  # as the service does at start-up
        d.mkdir(parents=True)
    return Harness(config, Ledger(config.ledger_path))


@pytest.fixture
def new_harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Harnesses with non-default inbox settings; each is stopped after the test."""
    made: list[Harness] = []

    def make(**inbox: Any) -> Harness:
        made.append(make_harness(tmp_path, **inbox))
        return made[-1]

    yield make
    for h in made:
        h.stop()


@pytest.fixture
def harness(new_harness: Callable[..., Harness]) -> Harness:
    return new_harness()


def photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    return [make_jpeg(folder / f"IMG_{i:04d}.jpg", seed=seed + i) for i in range(n)]


def digest_tree(root: Path) -> dict[str, tuple[str, int]]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                p.stat().st_mtime_ns,
            )
    return out


def test_slow_copy_becomes_one_batch_with_every_file(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    originals = photos(tmp_path / "camera", 6)
    # Settle a little longer than elsewhere, so a slow machine cannot stretch
    # a 0.6 s gap past it.
    harness = new_harness(settle_seconds=1.5)
    harness.start()
    dest = harness.dir / "trip"
    dest.mkdir()
    for src in originals:  # one file every 0.6 s: 3.6 s in all, gaps shorter than settle
        shutil.copyfile(src, dest / src.name)
        time.sleep(0.6)

    (batch,) = harness.wait_batches(1, "the copied folder to be claimed")
    assert not dest.exists()  # moved out, so it cannot be claimed a second time
    assert (batch.name, batch.kind) == ("trip", "folder")
    assert harness.images(batch.batch_id) == [p.name for p in originals]
    home = Path(batch.path or "")
    assert home == harness.config.batches_dir / f"{batch.batch_id:06d}-trip"
    assert digest_tree(home).keys() == {p.name for p in originals}
    assert len(harness.batches()) == 1
    harness.wait_queued([batch.batch_id], "the daemon to be told of the batch")


def test_folder_moved_in_with_one_rename_is_claimed(harness: Harness, tmp_path: Path) -> None:
    staging = tmp_path / "staging" / "Summer 2024"
    photos(staging / "day1", 2)
    photos(staging / "day2", 1, seed=10)
    harness.start()
    os.rename(staging, harness.dir / "Summer 2024")

    (batch,) = harness.wait_batches(1, "the moved-in folder to be claimed")
    assert batch.name == "Summer 2024"
    assert harness.images(batch.batch_id) == [
        "day1/IMG_0000.jpg",
        "day1/IMG_0001.jpg",
        "day2/IMG_0000.jpg",
    ]


def test_loose_files_become_one_batch(tmp_path: Path, new_harness: Callable[..., Harness]) -> None:
    elsewhere = make_jpeg(tmp_path / "elsewhere" / "linked.jpg", seed=8)
    before = digest_tree(elsewhere.parent)
    harness = new_harness(link_roots=[str(elsewhere.parent)])
    harness.start()
    for i in range(3):
        make_jpeg(harness.dir / f"loose_{i}.jpg", seed=i)
    (harness.dir / "linked.jpg").symlink_to(elsewhere)
    (harness.dir / "notes.txt").write_text("not a photo")
    (harness.dir / ".DS_Store").write_bytes(b"junk")

    (batch,) = harness.wait_batches(1, "the loose photos to be claimed")
    assert batch.kind == "loose"
    assert batch.name.startswith("loose-")
    assert harness.images(batch.batch_id) == [
        "linked.jpg",
        "loose_0.jpg",
        "loose_1.jpg",
        "loose_2.jpg",
    ]
    assert sorted(p.name for p in harness.dir.iterdir()) == [".DS_Store", "notes.txt"]
    assert (Path(batch.path or "") / "linked.jpg").is_symlink()  # indexed in place
    assert digest_tree(elsewhere.parent) == before
    # Left-over non-photos are not worth a report of their own.
    assert harness.notices_for("inbox") == []


def test_daemon_folders_inside_the_inbox_are_refused(tmp_path: Path) -> None:
    config = Config.model_validate(
        {"inbox_dir": str(tmp_path / "inbox"), "data_dir": str(tmp_path / "inbox" / "data")}
    )
    with pytest.raises(ConfigError, match=r"data_dir .* is inside inbox_dir"):
        Inbox(config, Ledger(tmp_path / "ledger.sqlite3"), print, print)
    assert not (tmp_path / "inbox" / "data").exists()


def test_link_to_a_folder_is_claimed_and_its_target_untouched(
    tmp_path: Path, new_harness: Callable[..., Harness]
) -> None:
    target = tmp_path / "nas" / "wedding"
    photos(target, 3)
    before = digest_tree(target)
    harness = new_harness(link_roots=[str(tmp_path / "nas")])
    harness.start()
    (harness.dir / "wedding").symlink_to(target)

    (batch,) = harness.wait_batches(1, "the linked folder to be claimed")
    assert batch.kind == "symlink"
    home = Path(batch.path or "")
    assert home.is_symlink() and home.resolve() == target
    assert not os.path.lexists(harness.dir / "wedding")
    assert harness.images(batch.batch_id) == sorted(before)
    assert target.is_dir() and digest_tree(target) == before


def test_link_into_the_daemons_own_folders_is_refused(
    new_harness: Callable[..., Harness],
) -> None:
    harness = new_harness(rescan_seconds=0.3)
    harness.start()
    (harness.dir / "loop").symlink_to(harness.dir)
    (harness.dir / "library").symlink_to(harness.config.batches_dir)
    wait_for(
        lambda: harness.notices_for("loop") and harness.notices_for("library"),
        DEADLINE,
        "both links to be reported",
    )
    # Claims change what the links point at; rescans go by. No second report.
    for round_ in range(2):
        photos(harness.dir / f"control{round_}", 1, seed=round_)
        harness.wait_batches(round_ + 1, "a control folder to be claimed")
    assert [n[0] for n in harness.notices_for("loop")] == [Code.SYMLINK_SKIPPED]
    assert [n[0] for n in harness.notices_for("library")] == [Code.SYMLINK_SKIPPED]
    assert (harness.dir / "loop").is_symlink() and (harness.dir / "library").is_symlink()


def test_folder_with_a_download_in_progress_waits(harness: Harness) -> None:
    harness.start()
    busy = harness.dir / "downloads"
    photos(busy, 1)
    make_jpeg(busy / "photo.jpg.part", seed=7)
    # A folder dropped later settles later: once it is claimed, the busy one
    # has had its chance too.
    time.sleep(0.3)
    photos(harness.dir / "control", 1, seed=20)
    (control,) = harness.wait_batches(1, "the control folder to be claimed")
    assert control.name == "control"
    assert busy.is_dir()

    (busy / "photo.jpg.part").rename(busy / "photo.jpg")
    batches = harness.wait_batches(2, "the finished download to be claimed")
    assert batches[1].name == "downloads"
    assert harness.images(batches[1].batch_id) == ["IMG_0000.jpg", "photo.jpg"]


def test_empty_and_junk_only_folders_are_reported_once_not_claimed(
    new_harness: Callable[..., Harness],
) -> None:
    harness = new_harness(rescan_seconds=0.3)
    harness.start()
    (harness.dir / "empty").mkdir()
    junk = harness.dir / "junk"
    junk.mkdir()
    (junk / ".DS_Store").write_bytes(b"x")
    (junk / "Thumbs.db").write_bytes(b"x")
    (junk / "readme.txt").write_text("x")
    wait_for(
        lambda: harness.notices_for("empty") and harness.notices_for("junk"),
        DEADLINE,
        "both folders to be reported",
    )
    # Several rescans and a claim go by; the reports are not repeated.
    for round_ in range(2):
        photos(harness.dir / f"control{round_}", 1, seed=30 + round_)
        harness.wait_batches(round_ + 1, "a control folder to be claimed")
    os.utime(junk)  # a touch that changes no file
    (junk / ".DS_Store").write_bytes(b"Finder rewrote this")  # junk churn is no news
    photos(harness.dir / "control2", 1, seed=40)
    harness.wait_batches(3, "a third control folder to be claimed")

    assert [n[0] for n in harness.notices_for("empty")] == [Code.NO_IMAGES]
    assert [n[0] for n in harness.notices_for("junk")] == [Code.NO_IMAGES]
    assert junk.is_dir() and (harness.dir / "empty").is_dir()
    assert {b.name for b in harness.batches()} == {"control0", "control1", "control2"}

    # Photos arriving later make it a batch after all.
    photos(harness.dir / "empty", 1, seed=50)
    batches = harness.wait_batches(4, "the no-longer-empty folder to be claimed")
    assert batches[-1].name == "empty"


def test_folders_dropped_while_stopped_are_claimed_at_start(harness: Harness) -> None:
    photos(harness.dir / "while-down", 2)
    make_jpeg(harness.dir / "loose.jpg", seed=9)
    harness.start()
    batches = harness.wait_batches(2, "the waiting drops to be claimed")
    assert sorted((b.kind, len(harness.images(b.batch_id))) for b in batches) == [
        ("folder", 2),
        ("loose", 1),
    ]
    harness.wait_queued([b.batch_id for b in batches], "the daemon to be told of both")


def test_crash_before_the_move_is_finished_exactly_once(harness: Harness) -> None:
    folder = harness.dir / "interrupted"
    photos(folder, 2)
    ledger, config = harness.ledger, harness.config
    batch_id = ledger.claims.reserve_batch("interrupted", "folder", [str(folder)])
    ledger.claims.set_batch_path(batch_id, config.batches_dir / f"{batch_id:06d}-interrupted")
    # ... and the daemon died here, before the rename.

    assert recover_claims(ledger, config) == [batch_id]
    assert recover_claims(ledger, config) == []
    batch = ledger.batch(batch_id)
    assert batch.state == BatchState.WAITING
    assert harness.images(batch_id) == ["IMG_0000.jpg", "IMG_0001.jpg"]
    assert not folder.exists()

    harness.start()  # the inbox does not claim it again
    photos(harness.dir / "control", 1, seed=9)
    harness.wait_batches(2, "the control folder to be claimed")
    assert [b.name for b in harness.batches()] == ["interrupted", "control"]


def test_crash_at_each_claim_step_recovers(harness: Harness) -> None:
    ledger, config = harness.ledger, harness.config
    # After the rename, before the files were recorded.
    moved = harness.dir / "moved"
    photos(moved, 1)
    moved_id = ledger.claims.reserve_batch("moved", "folder", [str(moved)])
    home = config.batches_dir / f"{moved_id:06d}-moved"
    ledger.claims.set_batch_path(moved_id, home)
    os.rename(moved, home)
    # Before the batch home was even recorded.
    early = harness.dir / "early"
    photos(early, 1, seed=3)
    early_id = ledger.claims.reserve_batch("early", "folder", [str(early)])
    # Loose files, half moved.
    loose = [make_jpeg(harness.dir / f"l{i}.jpg", seed=10 + i) for i in range(2)]
    loose_id = ledger.claims.reserve_batch("loose-x", "loose", [str(p) for p in loose])
    loose_home = config.batches_dir / f"{loose_id:06d}-loose-x"
    ledger.claims.set_batch_path(loose_id, loose_home)
    loose_home.mkdir()
    os.rename(loose[0], loose_home / loose[0].name)
    # Gone from both places (someone deleted it while the daemon was down).
    gone_id = ledger.claims.reserve_batch("gone", "folder", [str(harness.dir / "gone")])

    assert recover_claims(ledger, config) == [moved_id, early_id, loose_id]
    assert harness.images(moved_id) == ["IMG_0000.jpg"]
    assert harness.images(early_id) == ["IMG_0000.jpg"]
    assert harness.images(loose_id) == ["l0.jpg", "l1.jpg"]
    assert ledger.batch(gone_id).state == BatchState.FAILED
    assert ledger.batch(gone_id).error_code == Code.NOT_FOUND
    assert list(harness.dir.iterdir()) == []


def test_originals_are_byte_identical_and_nothing_else_is_touched(
    harness: Harness, tmp_path: Path
) -> None:
    source = tmp_path / "card"
    photos(source / "DCIM", 3)
    (source / "DCIM" / "notes.txt").write_text("kept as is")
    (source / "DCIM" / ".DS_Store").write_bytes(b"junk")
    before = digest_tree(source)
    bystander = tmp_path / "bystander"
    photos(bystander, 1, seed=99)
    untouched = digest_tree(bystander)
    harness.start()
    shutil.copytree(source, harness.dir / "card", copy_function=shutil.copy2)

    (batch,) = harness.wait_batches(1, "the card to be claimed")
    home = Path(batch.path or "")
    assert digest_tree(home) == before  # same bytes, same mtimes, junk kept too
    assert digest_tree(bystander) == untouched
    assert home.is_relative_to(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bystander",
        "card",
        "data",
        "inbox",
    ]


def test_polling_observer_claims_too(
    new_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="imgtrain.inbox")
    harness = new_harness(polling=True)
    harness.start()
    assert "PollingObserver" in caplog.text  # what the journal shows
    photos(harness.dir / "nfs-trip", 2)
    (batch,) = harness.wait_batches(1, "the folder to be claimed while polling")
    assert harness.images(batch.batch_id) == ["IMG_0000.jpg", "IMG_0001.jpg"]
