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
from daemon.ingest import listing, scan
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
    files, skipped = listing.list_batch_files(root, [])
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
    assert listing.scan_batch(root, []).ignored == 5  # notes, video, .DS_Store, ._a.jpg, @eaDir


def test_configured_ignore_patterns_apply_to_listing(tmp_path: Path) -> None:
    root = _tree(tmp_path / "trip")
    files, _ = listing.list_batch_files(root, ["fake.*", "sub"])
    assert {f.rel_path for f in files} == {"IMG_0003", "a.jpg", "disguised.png", "empty.jpg"}


def test_inner_symlinks_are_reported_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    make_jpeg(outside / "secret.jpg", seed=5)
    root = tmp_path / "trip"
    make_jpeg(root / "a.jpg", seed=1)
    (root / "loop").symlink_to(root)
    (root / "self").symlink_to("self")
    (root / "sibling").symlink_to("a.jpg")
    (root / "escape").symlink_to(outside)
    (root / "passwd.jpg").symlink_to(outside / "secret.jpg")
    (root / "chain").symlink_to("sibling")  # inside, then inside: still not followed
    before = (outside / "secret.jpg").stat()

    files, skipped = listing.list_batch_files(root, [])

    assert [f.rel_path for f in files] == ["a.jpg"]
    assert {(s.rel_path, s.code) for s in skipped} == {
        *((name, Code.SYMLINK_SKIPPED) for name in ("chain", "loop", "self", "sibling")),
        *((name, Code.LINK_OUTSIDE_ROOTS) for name in ("escape", "passwd.jpg")),
    }
    outside_note = next(s.message for s in skipped if s.rel_path == "escape")
    assert str(outside) in outside_note and "inbox.link_roots" in outside_note
    assert (outside / "secret.jpg").stat().st_mtime_ns == before.st_mtime_ns
    assert set(scan.snapshot(root, [])) == {
        *("a.jpg", "escape", "loop", "passwd.jpg", "self", "sibling", "chain")
    }
    # Into an allowed root a link is no escape, but an inner link is still not followed.
    files, skipped = listing.list_batch_files(root, [], link_roots=[str(outside)])
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert {s.code for s in skipped} == {Code.SYMLINK_SKIPPED}


def test_a_dropped_link_to_a_folder_is_followed_at_the_top_only(tmp_path: Path) -> None:
    target = tmp_path / "photos"
    make_jpeg(target / "a.jpg", seed=1)
    (target / "back").symlink_to(tmp_path)
    link = tmp_path / "inbox" / "photos"
    link.parent.mkdir()
    link.symlink_to(target)
    assert set(scan.snapshot(link, [])) == {"a.jpg", "back"}
    files, skipped = listing.list_batch_files(link, [])
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert [s.code for s in skipped] == [Code.LINK_OUTSIDE_ROOTS]  # out of the linked folder


def test_loose_links_are_read_only_inside_the_link_roots(tmp_path: Path) -> None:
    allowed, elsewhere = tmp_path / "nas", tmp_path / "private"
    make_jpeg(allowed / "ok.jpg", seed=1)
    make_jpeg(elsewhere / "secret.jpg", seed=2)
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "ok.jpg").symlink_to(allowed / "ok.jpg")
    (loose / "secret.jpg").symlink_to(elsewhere / "secret.jpg")
    (loose / "hop.jpg").symlink_to(loose / "secret.jpg")  # a chain that ends outside
    files, skipped = listing.list_batch_files(
        loose, [], follow_top_links=True, link_roots=[str(allowed)]
    )
    assert [f.rel_path for f in files] == ["ok.jpg"]
    assert files[0].sha256 == hashlib.sha256((allowed / "ok.jpg").read_bytes()).hexdigest()
    assert {(s.rel_path, s.code) for s in skipped} == {
        ("hop.jpg", Code.LINK_OUTSIDE_ROOTS),
        ("secret.jpg", Code.LINK_OUTSIDE_ROOTS),
    }


@pytest.mark.parametrize(
    ("path", "folders", "inside"),
    [
        ("/mnt/photos", ["/mnt/photos"], True),
        ("/mnt/photos/2024/a.jpg", ["/srv", "/mnt/photos"], True),
        ("/mnt/photosecret", ["/mnt/photos"], False),  # a prefix is not a parent
        ("/mnt", ["/mnt/photos"], False),
        ("/usr/share", [], False),
        ("/anything", ["/"], True),
    ],
)
def test_is_within_compares_whole_components(path: str, folders: list[str], inside: bool) -> None:
    assert scan.is_within(path, folders) is inside


# -- limits: a survey stops at the first entry over one ----------------------------------

LIMITS = scan.Limits(files=1000, depth=4, bytes=10**9)


def test_a_survey_stops_counting_at_the_file_limit(tmp_path: Path) -> None:
    root = tmp_path / "huge"
    for i in range(50):
        sub = root / f"d{i:02d}"
        sub.mkdir(parents=True)
        for j in range(100):
            (sub / f"{j:03d}.jpg").write_bytes(b"x")  # 5,050 entries in all
    survey = scan.survey(root, [], LIMITS)
    assert survey.over is not None and survey.over.key == "inbox.max_files_per_batch"
    assert survey.over.limit == 1000 and "1,000" in survey.over.what
    assert survey.seen == LIMITS.files + 1  # the walk stopped at the first entry over
    assert len(survey.files) < LIMITS.files
    unbounded = scan.survey(root, [])
    assert unbounded.over is None and unbounded.seen == 5050


def test_a_survey_stops_at_the_first_folder_too_deep(tmp_path: Path) -> None:
    root = tmp_path / "deep"
    deep = root
    for i in range(40):
        deep = deep / f"l{i}"
    make_jpeg(deep / "bottom.jpg", seed=1)
    survey = scan.survey(root, [], LIMITS)
    assert survey.over is not None and survey.over.key == "inbox.max_depth"
    assert "l0/l1/l2/l3/l4" in survey.over.what
    assert survey.seen == LIMITS.depth + 1  # four folders entered, the fifth not
    ok = scan.survey(root, [], scan.Limits(files=1000, depth=40, bytes=10**9))
    assert ok.over is None and "/bottom.jpg" in next(iter(ok.files))


def test_a_survey_stops_once_the_bytes_add_up_over_the_limit(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    for i in range(20):
        (root / f"{i:02d}.jpg").write_bytes(bytes(1000))
    survey = scan.survey(root, [], scan.Limits(files=1000, depth=4, bytes=4_500))
    assert survey.over is not None and survey.over.key == "inbox.max_batch_bytes"
    assert survey.seen == 6  # 5,000 bytes after five files: the sixth entry is not looked at
    assert scan.survey(root, [], scan.Limits(1000, 4, 20_000)).over is None


def test_deeply_nested_photos_are_found(tmp_path: Path) -> None:
    deep = tmp_path / "trip"
    for i in range(30):
        deep = deep / f"level{i:02d}"
    make_jpeg(deep / "deep.jpg", seed=4)
    files, _ = listing.list_batch_files(tmp_path / "trip", [])
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
    files, skipped = listing.list_batch_files(root, [])
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
        files, skipped = _as_unprivileged(lambda: listing.list_batch_files(root, []))  # type: ignore[misc]
    finally:
        (root / "closed").chmod(0o755)
    assert [f.rel_path for f in files] == ["a.jpg"]
    assert {(s.rel_path, s.code) for s in skipped} == {
        ("closed", Code.PERMISSION_DENIED),
        ("locked.jpg", Code.PERMISSION_DENIED),
    }
