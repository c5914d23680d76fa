"""The pieces the commands draw with: numbers for people, bars, contact sheets, permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from daemon.commands import access, render, watchcheck
from daemon.errors import InsufficientData
from daemon.imaging.contactsheet import BACKGROUND, SheetFace, crop_face, layout, make_sheet
from tests.conftest import make_jpeg


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.25, "250 ms"),
        (12.34, "12.3 s"),
        (125, "2m 05s"),
        (7260, "2h 01m"),
        (3 * 86400 + 7200, "3d 2h"),
    ],
)
def test_durations_read_naturally(seconds: float | None, text: str) -> None:
    assert render.duration(seconds) == text


def test_sizes_use_binary_units() -> None:
    assert render.size(512) == "512 B"
    assert render.size(3 * 2**30) == "3.0 GiB"


def test_a_bar_is_full_only_when_the_work_is_done() -> None:
    assert render.bar(99, 100, width=10).plain == "█" * 9 + "░"
    assert render.bar(100, 100, width=10).plain == "█" * 10
    assert render.bar(0, 0, width=4).plain == "░" * 4


def test_grid_layout_is_near_square_and_at_most_eight_wide() -> None:
    assert (layout(1).columns, layout(1).rows) == (1, 1)
    assert (layout(7).columns, layout(7).rows) == (3, 3)
    assert (layout(100).columns, layout(100).rows) == (8, 13)
    assert (layout(5, columns=5).columns, layout(5, columns=5).rows) == (5, 1)


def test_a_face_crop_is_centred_on_the_box_even_at_the_photo_edge() -> None:
    photo = Image.new("RGB", (200, 100), (0, 0, 255))
    photo.paste((255, 0, 0), (0, 0, 40, 40))  # a red "face" in the corner
    tile = crop_face(photo, (0, 0, 40, 40), tile=64, margin=0.25)
    assert tile.size == (64, 64)
    assert tile.getpixel((32, 32)) == (255, 0, 0)
    assert tile.getpixel((1, 1)) == BACKGROUND  # outside the photo: padding, not a shift


def test_a_contact_sheet_is_a_captioned_grid_png(tmp_path: Path) -> None:
    photos = [make_jpeg(tmp_path / f"p{i}.jpg", size=(320, 240), seed=i) for i in range(2)]
    faces = [
        SheetFace(f"abc{i}:0", photos[i % 2], (40 + i, 30, 140 + i, 150), f"abc{i}:0", "0.91")
        for i in range(5)
    ]
    faces.append(SheetFace("gone:0", tmp_path / "moved-away.jpg", (0, 0, 10, 10), "gone:0"))
    out = tmp_path / "sheets" / "faces.png"
    res = make_sheet(faces, out, title="cluster 3 - 6 faces", tile=96)
    grid = layout(6, tile=96)
    assert (res.columns, res.rows) == (3, 2)
    assert res.missing == ["gone:0"]
    with Image.open(out) as img:
        assert img.format == "PNG"
        assert img.size == res.size == grid.size
        x, y = grid.origin(0)
        crop = img.crop((x, y, x + 96, y + 96))
        assert len(crop.getcolors(maxcolors=100_000)) > 10  # a photo, not a blank tile
    with pytest.raises(InsufficientData):
        make_sheet([], tmp_path / "none.png", title="nobody")


def test_write_permission_is_judged_for_the_daemons_user(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir(mode=0o755)
    os.chown(d, os.geteuid(), os.getegid())
    me = access.DaemonUser(os.geteuid(), {os.getegid()}, "me", "you")
    nobody = access.DaemonUser(65534, {65534}, "nobody", "the running daemon")
    assert access.writable_by(d, me)
    assert not access.writable_by(d, nobody)
    d.chmod(0o777)
    assert access.writable_by(d, nobody)
    group = access.DaemonUser(65534, {65534, os.getegid()}, "nobody", "the running daemon")
    d.chmod(0o775)
    assert access.writable_by(d, group)


def test_the_inbox_filesystem_is_found_by_its_longest_mount_prefix(tmp_path: Path) -> None:
    fstype, mount = watchcheck.filesystem(tmp_path)
    assert fstype and str(tmp_path.resolve()).startswith(mount)
    assert watchcheck.filesystem(Path("/proc/self"))[0] == "proc"
