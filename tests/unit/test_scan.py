"""What the inbox sees in a dropped folder: ignore rules, safe names, the file list."""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.errors import Code
from daemon.ingest import scan
from tests.conftest import make_jpeg

JUNK = [
    ".DS_Store",
    "._IMG_0001.jpg",
    "Thumbs.db",
    "thumbs.db",
    "desktop.ini",
    "@eaDir",
    ".stfolder",
    ".stversions",
    "__MACOSX",
    ".hidden.jpg",
    ".git",
    "photo.jpg.part",
    "video.crdownload",
    "upload.tmp",
    "IMG_1.JPG.PART",
]


@pytest.mark.parametrize("name", JUNK)
def test_junk_is_ignored(name: str) -> None:
    assert scan.is_ignored(name, [])


@pytest.mark.parametrize("name", ["IMG_0001.jpg", "holiday", "part.jpg", "tmp", "notes.txt"])
def test_ordinary_names_are_not_ignored(name: str) -> None:
    assert not scan.is_ignored(name, [])


def test_configured_patterns_are_ignored_too() -> None:
    extra = ["*.mov", "raw_*"]
    assert scan.is_ignored("clip.MOV", extra)
    assert scan.is_ignored("raw_0001.jpg", extra)
    assert not scan.is_ignored("IMG_0001.jpg", extra)


def test_partial_downloads_are_named_as_such() -> None:
    assert scan.is_partial("photo.jpg.part")
    assert scan.is_partial("a.crdownload")
    assert not scan.is_partial(".DS_Store")


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "/etc/passwd",
        "../../etc",
        "a" * 300,
        "é" * 300,
        "line\nbreak",
        "tab\there\r",
        "日本の夏 2024",
        "\u202etxt.exe",
        "with\x00nul",
        "\udcff\udcfe",
        "   ",
        "con:aux*?<>|\\",
    ],
)
def test_safe_name_is_one_harmless_component(name: str, tmp_path: Path) -> None:
    safe = scan.safe_name(name)
    raw = safe.encode("utf-8")  # valid UTF-8, or this raises
    assert 0 < len(raw) <= scan.SAFE_NAME_BYTES
    assert safe not in (".", "..")
    assert not any(c in safe for c in "/\\\n\r\t\x00")
    assert not any(ord(c) < 32 or c == "\u202e" for c in safe)
    home = tmp_path / f"000001-{safe}"
    assert home.parent == tmp_path
    home.mkdir()  # the filesystem accepts it


def test_safe_name_keeps_readable_names() -> None:
    assert scan.safe_name("Summer 2024") == "Summer 2024"
    assert scan.safe_name("日本の夏") == "日本の夏"
    assert scan.safe_name("a/b") == "a_b"


def _tree(root: Path) -> Path:
    """A folder with the usual mix: photos, a disguised photo, non-photos, junk."""
    make_jpeg(root / "a.jpg", seed=1)
    make_jpeg(root / "sub" / "b.jpg", seed=2)
    (root / "disguised.png").write_bytes((root / "a.jpg").read_bytes())
    (root / "IMG_0003").write_bytes(make_jpeg(root / "tmp.jpg", seed=3).read_bytes())
    (root / "tmp.jpg").unlink()
    (root / "notes.txt").write_text("not a photo")
    (root / "video.mp4").write_bytes(b"\x00\x00\x00\x18mp42" + b"\x00" * 100)
    (root / "fake.jpg").write_text("this is text")
    (root / "empty.jpg").write_bytes(b"")
    (root / ".DS_Store").write_bytes(b"junk")
    (root / "._a.jpg").write_bytes(b"junk")
    (root / "@eaDir").mkdir()
    make_jpeg(root / "@eaDir" / "thumb.jpg", seed=9)
    return root


def test_listing_recognises_images_by_content(tmp_path: Path) -> None:
    root = _tree(tmp_path / "trip")
    files, skipped = scan.list_batch_files(root, [])
    by_path = {f.rel_path: f for f in files}
    assert list(by_path) == sorted(by_path)
    assert set(by_path) == {
        "IMG_0003",
        "a.jpg",
        "disguised.png",
        "empty.jpg",
        "fake.jpg",
        "sub/b.jpg",
    }
    assert by_path["disguised.png"].format == "jpeg"
    assert by_path["IMG_0003"].format == "jpeg"
    # Named like a photo but not one: listed so the phases report it.
    assert by_path["fake.jpg"].format is None
    assert by_path["empty.jpg"].size == 0
    data = (root / "sub" / "b.jpg").read_bytes()
    assert by_path["sub/b.jpg"].sha256 == hashlib.sha256(data).hexdigest()
    assert by_path["sub/b.jpg"].size == len(data)
    assert skipped == []
    assert scan.scan_batch(root, []).ignored == 5  # notes, video, .DS_Store, ._a.jpg, @eaDir


def test_configured_ignore_patterns_apply_to_listing(tmp_path: Path) -> None:
    root = _tree(tmp_path / "trip")
    files, _ = scan.list_batch_files(root, ["fake.*", "sub"])
    assert {f.rel_path for f in files} == {"IMG_0003", "a.jpg", "disguised.png", "empty.jpg"}


def test_inner_symlinks_are_reported_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_jpeg(outside / "secret.jpg", seed=5)
    root = tmp_path / "trip"
    make_jpeg(root / "a.jpg", seed=1)
    (root / "loop").symlink_to(root)
    (root / "self").symlink_to("self")
    (root / "escape").symlink_to(outside)
    (root / "passwd.jpg").symlink_to(outside / "secret.jpg")
    before = (outside / "secret.jpg").stat()

    files, skipped = scan.list_batch_files(root, [])

    assert [f.rel_path for f in files] == ["a.jpg"]
    assert {(s.rel_path, s.code) for s in skipped} == {
        (name, Code.SYMLINK_SKIPPED) for name in ("escape", "loop", "passwd.jpg", "self")
    }
    assert (outside / "secret.jpg").stat().st_mtime_ns == before.st_mtime_ns
    assert set(scan.snapshot(root, [])) == {"a.jpg", "escape", "loop", "passwd.jpg", "self"}


def test_a_dropped_link_to_a_folder_is_followed_at_the_top_only(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    make_jpeg(target / "a.jpg", seed=1)
    (target / "back").symlink_to(tmp_path)
    link = tmp_path / "inbox" / "photos"
    link.parent.mkdir()
    link.symlink_to(target)
    assert set(scan.snapshot(link, [])) == {"a.jpg", "back"}
    files, skipped = scan.list_batch_files(link, [])
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert [s.code for s in skipped] == [Code.SYMLINK_SKIPPED]


def test_deeply_nested_photos_are_found(tmp_path: Path) -> None:
    deep = tmp_path / "trip"
    for i in range(30):
        deep = deep / f"level{i:02d}"
    make_jpeg(deep / "deep.jpg", seed=4)
    files, _ = scan.list_batch_files(tmp_path / "trip", [])
    assert len(files) == 1
    assert files[0].rel_path.count("/") == 30
    assert files[0].rel_path.endswith("level29/deep.jpg")


def test_snapshot_sees_sizes_and_partial_downloads(tmp_path: Path) -> None:
    root = tmp_path / "trip"
    make_jpeg(root / "a.jpg", seed=1)
    (root / ".DS_Store").write_bytes(b"x")
    first = scan.snapshot(root, [])
    assert list(first) == ["a.jpg"]
    assert not scan.has_partial_downloads(root, [])
    (root / "sub").mkdir()
    (root / "sub" / "b.jpg.part").write_bytes(b"half")
    assert scan.has_partial_downloads(root, [])
    assert scan.snapshot(root, []) == first  # a .part is not content yet
    with (root / "a.jpg").open("ab") as fh:
        fh.write(b"more")
    assert scan.snapshot(root, [])["a.jpg"][0] == first["a.jpg"][0] + 4


def test_has_images(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / ".DS_Store").write_bytes(b"x")
    (junk / "notes.txt").write_text("x")
    assert not scan.has_images(junk, [])
    (junk / "IMG_0001").write_bytes(make_jpeg(tmp_path / "p.jpg").read_bytes())
    assert scan.has_images(junk, [])


def test_undecodable_file_names_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "trip"
    make_jpeg(root / "a.jpg", seed=1)
    bad = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 name from an old camera card
    make_jpeg(root / bad, seed=2)
    files, skipped = scan.list_batch_files(root, [])
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert [s.code for s in skipped] == [Code.UNREADABLE_IMAGE]
    skipped[0].rel_path.encode("utf-8")  # storable as text
    assert "UTF-8" in skipped[0].message


def _as_unprivileged(fn: Callable[[], object]) -> object:
    """Run fn where file permissions apply.

    As root, chmod 000 does not stop reads. Linux capabilities are per thread,
    so the call runs in a thread that has dropped CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH; the permission check the kernel makes is then real.
    """
    if os.geteuid() != 0:
        return fn()

    class Header(ctypes.Structure):
        _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))

    class Data(ctypes.Structure):
        _fields_ = (
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        )

    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[str, object] = {}

    def body() -> None:
        header, data = Header(0x20080522, 0), (Data * 2)()
        assert libc.capget(ctypes.byref(header), data) == 0
        data[0].effective &= ~((1 << 1) | (1 << 2))
        assert libc.capset(ctypes.byref(header), data) == 0, ctypes.get_errno()
        out["result"] = fn()

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert "result" in out, "the unprivileged listing did not finish"
    return out["result"]


def test_unreadable_files_are_skipped_and_the_rest_listed(tmp_path: Path) -> None:
    root = tmp_path / "trip"
    make_jpeg(root / "a.jpg", seed=1)
    make_jpeg(root / "locked.jpg", seed=2).chmod(0)
    make_jpeg(root / "closed" / "c.jpg", seed=3)
    (root / "closed").chmod(0)
    try:
        files, skipped = _as_unprivileged(lambda: scan.list_batch_files(root, []))  # type: ignore[misc]
    finally:
        (root / "closed").chmod(0o755)
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert {(s.rel_path, s.code) for s in skipped} == {
        ("closed", Code.PERMISSION_DENIED),
        ("locked.jpg", Code.PERMISSION_DENIED),
    }
