"""Decoding photos: odd modes, rotation, big and broken files, format sniffing."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.config import DecodeConfig
from daemon.errors import Code, ImageError
from daemon.imaging.decode import decode, sniff_format, to_bgr
from tests.conftest import make_jpeg

CFG = DecodeConfig(max_side=1600, min_side=8)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error(path: Path, cfg: DecodeConfig = CFG) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode(path, cfg)
    assert info.value.path == str(path)
    return info.value


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 20_000) -> Path:
    """A valid 1-bit PNG of side x side pixels: a few dozen KB on disk."""
    comp = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )
    return path


def test_plain_jpeg_keeps_size_and_is_rgb(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", (320, 240))
    d = decode(path, CFG)
    assert (d.width, d.height, d.scale) == (320, 240, 1.0)
    assert d.image.mode == "RGB" and d.image.size == (320, 240)
    assert d.captured_at is None


def test_cmyk_jpeg_comes_out_with_the_right_colour(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (64, 64), (200, 30, 30)).convert("CMYK").save(path, "JPEG", quality=95)
    d = decode(path, CFG)
    r, g, b = d.image.getpixel((32, 32))
    assert d.image.mode == "RGB"
    assert r > 150 and g < 80 and b < 80


def test_16bit_png_mid_grey_stays_mid_grey(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    arr = np.full((40, 60), 32768, dtype=np.uint16)
    arr[:, :30] = 65535  # left half white, so a clipping bug and a scaling bug differ
    Image.fromarray(arr).save(path)
    d = decode(path, CFG)
    px = np.asarray(d.image)
    assert d.image.mode == "RGB" and d.image.size == (60, 40)
    assert abs(int(px[20, 45, 0]) - 128) <= 1
    assert px[20, 5].tolist() == [255, 255, 255]


def test_palette_png_with_transparency_composites_on_white(tmp_path: Path) -> None:
    path = tmp_path / "pal.png"
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (16, 0, 32, 32))
    img.save(path, transparency=0)
    px = np.asarray(decode(path, CFG).image)
    assert px[5, 5].tolist() == [255, 255, 255]  # transparent black became white
    assert px[5, 25].tolist() == [0, 0, 255]


def test_rgba_composites_on_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    img = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    img.paste((0, 128, 0, 255), (0, 0, 16, 32))
    img.save(path)
    px = np.asarray(decode(path, CFG).image)
    assert px[5, 25].tolist() == [255, 255, 255]
    assert px[5, 5].tolist() == [0, 128, 0]


def test_exif_rotated_jpeg_is_upright_and_reports_upright_size(tmp_path: Path) -> None:
    path = tmp_path / "rot.jpg"
    img = Image.new("RGB", (400, 200), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 200))  # red on the stored image's left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 18:30:05"
    img.save(path, "JPEG", quality=95, exif=exif)
    d = decode(path, CFG)
    assert (d.width, d.height) == (200, 400)
    assert d.image.size == (200, 400)
    r, _, b = d.image.getpixel((100, 20))  # the stored left edge is now the top
    assert r > 200 and b < 60
    assert d.captured_at == "2021-07-04T18:30:05"


def test_large_jpeg_decodes_reduced_through_draft(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "big.jpg", (4000, 3000))
    cfg = DecodeConfig(max_side=800)
    d = decode(path, cfg)
    assert (d.width, d.height) == (4000, 3000)
    assert max(d.image.size) <= 800 and d.image.size == (800, 600)
    assert d.scale == pytest.approx(0.2)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    d = decode(path, CFG)
    r, g, b = d.image.getpixel((20, 15))
    assert d.image.mode == "RGB" and r > 200 and g < 50 and b < 50


def test_truncated_jpeg_is_unreadable(tmp_path: Path) -> None:
    whole = make_jpeg(tmp_path / "whole.jpg", (640, 480)).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[: len(whole) // 2])
    err = _error(path)
    assert err.code == Code.UNREADABLE_IMAGE
    assert "truncated" in err.message


def test_zero_byte_file_is_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    err = _error(path)
    assert err.code == Code.UNREADABLE_IMAGE and "empty" in err.message


def test_text_file_named_jpg_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("BM these are my holiday notes, not a picture\n" * 4)
    err = _error(path)
    assert err.code == Code.UNREADABLE_IMAGE and "not an image" in err.message
    assert sniff_format(path) is None


def test_heic_without_a_decoder_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "phone.heic"
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    path.write_bytes(struct.pack(">I", 8 + len(ftyp)) + ftyp + bytes(200))
    assert sniff_format(path) == "heic"
    err = _error(path)
    assert err.code == Code.UNSUPPORTED_FORMAT and "HEIC" in err.message


def test_decompression_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    path = _bomb_png(tmp_path / "bomb.png")
    assert path.stat().st_size < 200_000
    err = _error(path)
    assert err.code == Code.IMAGE_TOO_LARGE
    assert "400000000 pixels" in err.message  # refused from the header, never decoded


def test_image_over_the_configured_pixel_limit_is_too_large(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "wide.jpg", (2000, 1000))
    err = _error(path, DecodeConfig(max_image_pixels=1_000_000))
    assert err.code == Code.IMAGE_TOO_LARGE and "2000x1000" in err.message


def test_one_pixel_image_is_too_small(tmp_path: Path) -> None:
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (9, 9, 9)).save(path)
    assert _error(path).code == Code.IMAGE_TOO_SMALL


def test_sniff_format_reads_content_not_names(tmp_path: Path) -> None:
    img = Image.new("RGB", (16, 16), (1, 2, 3))
    expected = {
        "x.jpg": ("JPEG", "jpeg"),
        "x.png": ("PNG", "png"),
        "x.gif": ("GIF", "gif"),
        "x.webp": ("WEBP", "webp"),
        "x.bmp": ("BMP", "bmp"),
        "x.tif": ("TIFF", "tiff"),
        "x.avif": ("AVIF", "avif"),
    }
    for name, (pil_format, fmt) in expected.items():
        img.save(tmp_path / name, pil_format)
        assert sniff_format(tmp_path / name) == fmt, name
        assert decode(tmp_path / name, CFG).image.size == (16, 16), name
    lying = tmp_path / "really_a_jpeg.png"
    lying.write_bytes((tmp_path / "x.jpg").read_bytes())
    assert sniff_format(lying) == "jpeg"
    assert decode(lying, CFG).image.size == (16, 16)
    assert sniff_format(tmp_path / "missing.jpg") is None


def test_decode_never_changes_the_file(tmp_path: Path) -> None:
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 8
    make_jpeg(rotated, (3000, 2000), exif=exif)
    grey = tmp_path / "g16.png"
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(grey)
    for path in (rotated, grey):
        before, mtime = _sha(path), path.stat().st_mtime_ns
        decode(path, DecodeConfig(max_side=500))
        assert _sha(path) == before and path.stat().st_mtime_ns == mtime


def test_to_bgr_swaps_channels_into_a_contiguous_array() -> None:
    arr = to_bgr(Image.new("RGB", (5, 3), (10, 20, 30)))
    assert arr.shape == (3, 5, 3) and arr.dtype == np.uint8
    assert arr.flags["C_CONTIGUOUS"]
    assert arr[0, 0].tolist() == [30, 20, 10]


def test_dct_scaling_that_lands_just_under_max_side_skips_the_resize(tmp_path: Path) -> None:
    """3000x2000 at max_side 1600: libjpeg's 1/2 gives 1500x1000, kept as is."""
    path = make_jpeg(tmp_path / "six_mp.jpg", (3000, 2000))
    d = decode(path, DecodeConfig(max_side=1600))
    assert (d.width, d.height) == (3000, 2000)
    assert d.image.size == (1500, 1000)
    assert d.scale == 0.5  # face boxes are divided by it to get original pixels


def test_dct_scaling_too_far_under_max_side_is_not_used(tmp_path: Path) -> None:
    """4032x3024 at max_side 1600: 1/4 would give 1008 (37% under), so 1/2 then a resize."""
    path = make_jpeg(tmp_path / "twelve_mp.jpg", (4032, 3024))
    d = decode(path, DecodeConfig(max_side=1600))
    assert d.image.size == (1600, 1200)
    assert d.scale == pytest.approx(1600 / 4032)


def test_rotated_photo_decoded_by_dct_scaling_is_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    path = make_jpeg(tmp_path / "rot.jpg", (3000, 2000), exif=exif.tobytes())
    d = decode(path, DecodeConfig(max_side=1600))
    assert (d.width, d.height) == (2000, 3000)
    assert d.image.size == (1000, 1500)
    assert d.scale == 0.5
