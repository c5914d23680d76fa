"""A corpus of bad input, generated here, through one running daemon.

Every file gets what a user would expect: processed, or skipped with a
specific error code that shows in the status file and the ledger. Every
claimed batch finishes, and no original is changed, deleted, or moved
anywhere but its batch folder under data/batches/.

The daemon runs without root's power to ignore file permissions (see
`RootlessDaemon`): the tests run as root here, and a root daemon would read a
file with mode 000, so "permission denied" could not happen.

One daemon run serves every test in this module (`bad_run`); each test
checks one kind of input, so one regression names itself.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from daemon.ingest import scan
from tests.conftest import base_config, make_jpeg
from tests.helpers import wait_for
from tests.reliability.conftest import LedgerProbe, RootlessDaemon, file_states

PROCESSED = "processed"
LEFT_OUT = "left out"  # not a photo, or junk: no error, not in the ledger, kept in the batch
FOLDER = "odd photos"  # the dropped folder holding the per-file corpus
UNICODE_FOLDER = "fête\nété ☀"  # a newline and non-ASCII in the folder name itself
DEEP = "/".join(f"d{i:02d}" for i in range(64)) + "/deep.jpg"
NON_UTF8 = b"bad\xffname.jpg"  # bytes that are not UTF-8, as old cameras and zip files make

# The expected outcome of every entry in FOLDER, and why a user expects it.
EXPECTED: list[tuple[str, str, str]] = [
    ("plain.jpg", PROCESSED, "an ordinary photo, the control"),
    ("truncated.jpg", "UNREADABLE_IMAGE", "half the file is missing; Pillow refuses it"),
    ("empty.jpg", "UNREADABLE_IMAGE", "zero bytes"),
    ("notes.jpg", "UNREADABLE_IMAGE", "text named .jpg: listed so the user sees it"),
    ("bomb.png", "IMAGE_TOO_LARGE", "20000x20000 in 50 KB: refused from the header"),
    ("dot.png", "IMAGE_TOO_SMALL", "1x1 pixel, below decode.min_side"),
    ("deep16.png", PROCESSED, "16-bit greyscale PNG"),
    ("cmyk.jpg", PROCESSED, "CMYK JPEG (print workflows)"),
    ("palette.png", PROCESSED, "palette PNG with a transparent colour"),
    ("anim.gif", PROCESSED, "animated GIF: its first frame"),
    ("rotated.jpg", PROCESSED, "EXIF orientation 6: embedded upright"),
    ("with space.jpg", PROCESSED, "a space in the name"),
    ("ünïcødé 写真.jpg", PROCESSED, "non-ASCII name"),
    ("new\nline.jpg", PROCESSED, "a newline in the name"),
    (scan.printable(os.fsdecode(NON_UTF8)), "UNREADABLE_IMAGE", "name is not UTF-8: rename it"),
    ("locked.jpg", "PERMISSION_DENIED", "mode 000"),
    ("closed", "PERMISSION_DENIED", "a subfolder with mode 000"),
    ("loop_a", "SYMLINK_SKIPPED", "links to loop_b, which links back"),
    ("loop_b", "SYMLINK_SKIPPED", "links to loop_a"),
    ("self.jpg", "SYMLINK_SKIPPED", "a link to itself"),
    ("outside.jpg", "LINK_OUTSIDE_ROOTS", "a link to a photo outside the folder: not followed"),
    ("outside_dir", "LINK_OUTSIDE_ROOTS", "a link to a folder outside the folder: not followed"),
    (DEEP, PROCESSED, "64 folders deep (inbox.max_depth raised to allow it)"),
    ("readme.txt", LEFT_OUT, "not a photo"),
    (".DS_Store", LEFT_OUT, "Finder junk"),
]


# -- the corpus ---------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 20_000) -> None:
    """A complete, valid 1-bit PNG of side x side pixels that is tiny on disk."""
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )


def _make_corpus(folder: Path, outside: Path) -> None:
    folder.mkdir(parents=True)
    make_jpeg(folder / "plain.jpg", seed=1)
    whole = make_jpeg(folder / "truncated.jpg", seed=2).read_bytes()
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("shopping list: milk, film, batteries\n")
    _bomb_png(folder / "bomb.png")
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    ramp = np.linspace(0, 65535, 200 * 150, dtype=np.uint16).reshape(150, 200)
    Image.fromarray(ramp).save(folder / "deep16.png")  # mode I;16: a 16-bit PNG
    cmyk = Image.new("CMYK", (200, 150), (0, 120, 240, 0))
    cmyk.paste((200, 0, 50, 30), (40, 40, 120, 110))
    cmyk.save(folder / "cmyk.jpg", "JPEG", quality=90)
    pal = Image.new("P", (200, 150), 0)
    pal.putpalette([255, 255, 255, 200, 30, 30, 30, 30, 200] + [0] * (256 * 3 - 9))
    pal.paste(1, (20, 20, 120, 100))
    pal.paste(2, (100, 60, 180, 140))
    pal.save(folder / "palette.png", transparency=0)
    frames = [Image.new("RGB", (160, 120), c) for c in ((250, 0, 0), (0, 250, 0), (0, 0, 250))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    make_jpeg(folder / "rotated.jpg", size=(320, 200), seed=3, exif=exif.tobytes())
    make_jpeg(folder / "with space.jpg", seed=4)
    make_jpeg(folder / "ünïcødé 写真.jpg", seed=5)
    make_jpeg(folder / "new\nline.jpg", seed=6)
    with open(os.path.join(os.fsencode(folder), NON_UTF8), "wb") as fh:
        fh.write(make_jpeg(outside.parent / "scratch.jpg", seed=7).read_bytes())
    (outside.parent / "scratch.jpg").unlink()
    make_jpeg(folder / "locked.jpg", seed=8).chmod(0)
    make_jpeg(folder / "closed" / "inside.jpg", seed=9)
    (folder / "closed").chmod(0)
    os.symlink("loop_b", folder / "loop_a")
    os.symlink("loop_a", folder / "loop_b")
    os.symlink("self.jpg", folder / "self.jpg")
    make_jpeg(outside / "secret.jpg", seed=10)
    os.symlink(outside / "secret.jpg", folder / "outside.jpg")
    os.symlink(outside, folder / "outside_dir")
    make_jpeg(folder / DEEP, seed=11)
    (folder / "readme.txt").write_text("photos from the trip\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")


def _restore_permissions(root: Path) -> None:
    """Let pytest (or a non-root user) clean up the mode-000 entries."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755)


# -- one daemon run over the whole corpus ---------------------------------------------


@dataclass
class BadRun:
    daemon: RootlessDaemon
    before: dict[str, dict[str, Any]]  # top-level name -> file_states() before the drop
    outside: Path
    outside_before: dict[str, Any]
    status: dict[str, Any]
    batches: dict[str, sqlite3.Row]  # by name
    errors: list[sqlite3.Row]
    images: list[sqlite3.Row]
    chroma: dict[str, dict[str, Any]]  # image sha -> metadata

    def batch_dir(self, name: str) -> Path:
        return Path(self.batches[name]["path"])


def _run_until_settled(d: RootlessDaemon) -> None:
    probe = LedgerProbe(d.data / "ledger.sqlite3")

    def noticed(code: str, name: str) -> bool:
        return bool(
            probe.rows("SELECT 1 FROM errors WHERE code=? AND file=?", (code, str(d.inbox / name)))
        )

    d.wait_idle_with(completed=3, timeout=120)
    wait_for(
        lambda: noticed("NO_IMAGES", "empty") and noticed("NO_IMAGES", "junk only"),
        30,
        "NO_IMAGES for the empty and the junk-only folder",
    )
    # Time passing is the point: three full rescans (rescan_seconds=1) that
    # must not report the same folders again.
    time.sleep(3)
    d.assert_alive()
    probe.close()
    assert d.terminate() == 0


@pytest.fixture(scope="module")
def bad_run(
    tmp_path_factory: pytest.TempPathFactory, tiny_clip_config: Path, face_pack: Path
) -> Iterator[BadRun]:
    import chromadb

    root = tmp_path_factory.mktemp("bad")
    src, outside, trip = root / "src", root / "outside", root / "outside_trip"
    # The owner allows links into the outside trip's folder, and nesting deeper than
    # the default inbox.max_depth (32), so that DEEP is claimed.
    inbox = {"rescan_seconds": 1.0, "link_roots": [str(trip)], "max_depth": 80}
    cfg = base_config(root, tiny_clip_config, face_pack, inbox=inbox)
    d = RootlessDaemon(root, cfg)
    try:
        _make_corpus(src / FOLDER, outside)
        for i in range(2):
            make_jpeg(src / UNICODE_FOLDER / f"u{i}.jpg", seed=20 + i)
        (src / "empty").mkdir()
        junk = src / "junk only"
        junk.mkdir()
        (junk / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (junk / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
        (junk / "notes.txt").write_text("not a photo\n")
        (junk / "clip.mp4").write_bytes(b"\0\0\0\x18ftypmp42" + bytes(64))
        for i in range(3):
            make_jpeg(trip / f"t{i}.jpg", seed=30 + i)
        before = {name: file_states(src / name) for name in os.listdir(src)}
        outside_before = {"outside": file_states(outside), "outside_trip": file_states(trip)}

        d.start()
        d.wait_status(lambda s: s["status"] == "idle", 90, "the daemon to start")
        for name in os.listdir(src):
            os.rename(src / name, d.inbox / name)
        os.symlink("loop", d.inbox / "loop")
        os.symlink(trip, d.inbox / "linked trip")
        _run_until_settled(d)

        ledger = d.ledger()
        status = d.status()
        assert status is not None
        batches = {b["name"]: b for b in ledger.query("SELECT * FROM batches")}
        errors = ledger.query("SELECT * FROM errors ORDER BY error_id")
        images = ledger.query(
            "SELECT i.*, b.name AS batch,"
            " (SELECT GROUP_CONCAT(p.phase || '=' || p.state) FROM image_phases p"
            "  WHERE p.image_id = i.image_id) AS phases"
            " FROM images i JOIN batches b USING(batch_id)"
        )
        col = chromadb.PersistentClient(path=str(d.data / "chroma")).get_collection("images")
        got = col.get(include=["metadatas"])
        chroma = dict(zip(got["ids"], got["metadatas"] or [], strict=True))
        yield BadRun(d, before, outside, outside_before, status, batches, errors, images, chroma)
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill()
        _restore_permissions(root)
        shutil.rmtree(root, ignore_errors=True)


# -- the checks --------------------------------------------------------------------


@pytest.mark.parametrize(("rel", "expected", "why"), EXPECTED, ids=[e[0][:24] for e in EXPECTED])
def test_each_bad_file_gets_the_expected_outcome(
    bad_run: BadRun, rel: str, expected: str, why: str
) -> None:
    batch = bad_run.batches[FOLDER]
    assert batch["state"] == "completed", dict(batch)
    errors = [e for e in bad_run.errors if e["batch_id"] == batch["batch_id"] and e["file"] == rel]
    images = [i for i in bad_run.images if i["batch"] == FOLDER and i["rel_path"] == rel]
    if expected == PROCESSED:
        assert errors == [], f"{rel} ({why}): {[dict(e) for e in errors]}"
        assert len(images) == 1, f"{rel} ({why}) is not in the ledger"
        phases = dict(p.split("=") for p in images[0]["phases"].split(","))
        assert phases["embedding"] == "done", (rel, phases)
        assert phases["faces"] in ("done", "no_faces"), (rel, phases)
        assert images[0]["sha256"] in bad_run.chroma, f"{rel} has no vector in Chroma"
    elif expected == LEFT_OUT:
        assert errors == [] and images == [], (rel, why)
    else:
        assert [e["code"] for e in errors] == [expected], (
            f"{rel} ({why}): expected one {expected}, got {[dict(e) for e in errors]}"
        )
        for image in images:  # decode failures are listed, then fail in every phase
            assert image["sha256"] not in bad_run.chroma, f"{rel} has a vector"
            assert "done" not in image["phases"], (rel, image["phases"])
        shown = {(e["code"], e["file"]) for e in bad_run.status["errors"]}
        assert (expected, rel) in shown, f"{rel}: {expected} is not in the status file"


def test_an_exif_rotated_photo_is_embedded_upright(bad_run: BadRun) -> None:
    (image,) = [i for i in bad_run.images if i["rel_path"] == "rotated.jpg"]
    meta = bad_run.chroma[image["sha256"]]
    assert (meta["width"], meta["height"]) == (200, 320)  # stored 320x200, shown turned


def test_every_claimed_batch_finishes_and_its_home_is_under_data_batches(
    bad_run: BadRun,
) -> None:
    batches_dir = bad_run.daemon.data / "batches"
    assert set(bad_run.batches) == {FOLDER, scan.printable(UNICODE_FOLDER), "linked trip"}
    for name, b in bad_run.batches.items():
        assert b["state"] == "completed", (name, dict(b))
        home = Path(b["path"])
        assert home.parent == batches_dir, home
        assert os.path.lexists(home), home
        assert "\n" not in home.name and "/" not in home.name and home.name[:6].isdigit()
    assert bad_run.status["queue"]["completed"] == 3
    assert bad_run.status["queue"]["failed"] == 0


def test_no_original_is_changed_or_lost(bad_run: BadRun) -> None:
    d = bad_run.daemon
    for name, states in bad_run.before.items():
        if name in bad_run.batches:
            now = file_states(bad_run.batch_dir(name))
        else:
            now = file_states(d.inbox / name)  # not claimed: still where the user put it
        assert now == states, f"{name}: originals differ after the run"
    assert not (d.inbox / FOLDER).exists()


def test_links_never_lead_the_daemon_to_touch_their_targets(bad_run: BadRun) -> None:
    assert file_states(bad_run.outside) == bad_run.outside_before["outside"]
    trip = bad_run.outside.parent / "outside_trip"
    assert file_states(trip) == bad_run.outside_before["outside_trip"]
    # A dropped link to a folder is followed on purpose (the user chose it): the
    # link moves into data/batches, the photos are read where they are.
    home = bad_run.batch_dir("linked trip")
    assert home.is_symlink() and Path(os.readlink(home)) == trip
    names = sorted(i["rel_path"] for i in bad_run.images if i["batch"] == "linked trip")
    assert names == ["t0.jpg", "t1.jpg", "t2.jpg"]


def test_a_folder_name_with_a_newline_and_unicode_is_claimed_safely(bad_run: BadRun) -> None:
    name = scan.printable(UNICODE_FOLDER)
    home = bad_run.batch_dir(name)
    assert home.name.endswith(scan.safe_name(name)) and "\n" not in home.name
    assert sorted(p.name for p in home.iterdir()) == ["u0.jpg", "u1.jpg"]
    mine = [i for i in bad_run.images if i["batch"] == name]
    assert [("embedding=done" in i["phases"]) for i in mine] == [True, True]


def test_empty_and_junk_only_folders_are_reported_once_and_left_alone(bad_run: BadRun) -> None:
    d = bad_run.daemon
    for name in ("empty", "junk only"):
        notices = [e for e in bad_run.errors if e["file"] == str(d.inbox / name)]
        assert [e["code"] for e in notices] == ["NO_IMAGES"], [dict(e) for e in notices]
        assert name not in bad_run.batches
        assert (d.inbox / name).is_dir()
        shown = [e for e in bad_run.status["errors"] if e["file"] == str(d.inbox / name)]
        assert [e["code"] for e in shown] == ["NO_IMAGES"]


def test_a_dropped_link_loop_is_reported_once_and_left_alone(bad_run: BadRun) -> None:
    d = bad_run.daemon
    assert os.readlink(d.inbox / "loop") == "loop", "the link itself must stay"
    notices = [e for e in bad_run.errors if e["file"] == str(d.inbox / "loop")]
    assert [e["code"] for e in notices] == ["SYMLINK_SKIPPED"], (
        "a link loop dropped in the inbox is never claimed; the user must be told why,"
        f" once (got {[dict(e) for e in notices]})"
    )
