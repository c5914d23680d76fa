"""Decode each photo once, safely, into the RGB image every image phase uses.

The size in the header is checked before any pixel is decoded, so a
decompression bomb costs a few bytes of reading. Large JPEGs are decoded with
libjpeg's DCT scaling (draft mode), which is several times faster than a full
decode followed by a resize; where a scale of 1/2, 1/4 or 1/8 lands at most
DRAFT_SLACK below `max_side`, that decode is kept as it is and the resize is
skipped (a 3000x2000 photo decodes at 1/2 to 1500x1000, 2.5x faster than at
full size and resized to 1600). The file is only ever opened for reading.

`read_header` and `planned_size` give the same checks and the same output
size to the GPU decoder (`daemon.imaging.gpu`), which decodes the pixels
with nvJPEG instead and falls back to `decode` for anything else.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from daemon.errors import ImageTooLarge, ImageTooSmall, UnreadableImage, UnsupportedFormat

if TYPE_CHECKING:
    from daemon.config import DecodeConfig

# Pillow's plugins report broken files with many exception types (a TIFF with a
# bad tag raises KeyError, a short PNG chunk struct.error); every one of them
# means "this file cannot be decoded", never a bug in the daemon.
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_FTYP_BRANDS = {
    b"heic": "heic", b"heix": "heic", b"heim": "heic", b"heis": "heic",
    b"hevc": "heic", b"hevx": "heic", b"hevm": "heic", b"hevs": "heic",
    b"avif": "avif", b"avis": "avif",
    b"mif1": "heif", b"msf1": "heif",
}  # fmt: skip
_BMP_DIB_SIZES = {12, 40, 52, 56, 64, 108, 124}
# How far below max_side a JPEG may come out of DCT scaling: the faces phase
# detects at 640 px and CLIP looks at 224 px, so 10% fewer pixels on a side
# changes nothing they see, while the saved full decode and resize is the
# largest single cost of a batch on a small CPU.
DRAFT_SLACK = 0.9
_ORIENTATION = 0x0112
_DATETIME_ORIGINAL = 0x9003
_OFFSET_TIME_ORIGINAL = 0x9011


@dataclass
class Decoded:
    # RGB, upright, longest side <= max_side. None only from the GPU decoder when
    # the caller needs the pixels on the GPU alone (`pixels`).
    image: Image.Image | None
    width: int  # original upright width
    height: int  # original upright height
    scale: float  # decoded size / original size (<= 1.0)
    captured_at: str | None  # EXIF DateTimeOriginal, ISO-8601
    pixels: Any = None  # the same photo as a uint8 3xHxW torch tensor, when decoded on a GPU


@dataclass(frozen=True)
class Header:
    """What the header says, read without decoding a pixel; the size checks passed."""

    format: str | None  # Pillow's name for it: JPEG, MPO, PNG, ...
    mode: str  # Pillow's mode: RGB (also YCbCr JPEGs), L, CMYK, ...
    stored: tuple[int, int]  # width, height as stored (before EXIF orientation)
    orientation: int  # EXIF orientation, 1 (upright) to 8
    captured_at: str | None

    @property
    def rotated(self) -> bool:
        return self.orientation in (5, 6, 7, 8)

    @property
    def upright(self) -> tuple[int, int]:
        w, h = self.stored
        return (h, w) if self.rotated else (w, h)


def sniff_format(path: Path) -> str | None:
    """The image type from the file's first bytes (never its name), or None."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return None
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    # "BM" alone is too weak (a text file may start with it); the DIB header
    # size that follows the 14-byte file header is one of a few fixed values.
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and struct.unpack("<I", head[14:18])[0] in _BMP_DIB_SIZES
    ):
        return "bmp"
    if head[4:8] == b"ftyp":
        return _ftyp_format(head)
    return None


def _ftyp_format(head: bytes) -> str | None:
    box_size = min(struct.unpack(">I", head[:4])[0], len(head))
    major = _FTYP_BRANDS.get(head[8:12])
    compatible = [_FTYP_BRANDS.get(head[i : i + 4]) for i in range(16, box_size - 3, 4)]
    # A generic major brand (mif1) is refined by the compatible brands.
    for specific in ("avif", "heic"):
        if major == specific or (major in (None, "heif") and specific in compatible):
            return specific
    return major or ("heif" if "heif" in compatible else None)


def decode(path: Path, cfg: DecodeConfig) -> Decoded:
    """Decode `path` to an upright RGB image no larger than cfg.max_side.

    Raises UnreadableImage, UnsupportedFormat, ImageTooLarge or ImageTooSmall,
    each carrying `path`.
    """
    with _opened(path) as im:
        return _decode_open(im, path, cfg)


def read_header(path: Path, cfg: DecodeConfig) -> Header:
    """The header's facts, with `decode`'s size checks and errors, and no pixel decoded."""
    with _opened(path) as im:
        return _header(im, path, cfg)


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image opened for reading; whatever goes wrong inside becomes an ImageError."""
    where = str(path)
    try:
        with Image.open(path) as im:
            yield im
    except Image.DecompressionBombError as exc:
        # Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS) fires inside open().
        raise ImageTooLarge(f"{path.name}: {exc}", path=where) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(path) from exc
    except FileNotFoundError as exc:
        raise UnreadableImage(f"{path.name}: the file disappeared", path=where) from exc
    except PermissionError as exc:
        raise UnreadableImage(
            f"{path.name}: permission denied",
            hint="Make the file readable by the daemon's user.",
            path=where,
        ) from exc
    except MemoryError as exc:
        raise ImageTooLarge(f"{path.name}: not enough memory to decode it", path=where) from exc
    except _DECODE_ERRORS as exc:
        fmt = sniff_format(path)
        if fmt is None:  # some plugin claimed it from a two-byte prefix ("BM...")
            raise _unidentified(path) from exc
        raise UnreadableImage(
            f"{path.name}: truncated or corrupt {fmt} ({exc})", path=where
        ) from exc


def _unidentified(path: Path) -> UnreadableImage | UnsupportedFormat:
    where = str(path)
    fmt = sniff_format(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = -1
    if size == 0:
        return UnreadableImage(f"{path.name}: empty file (0 bytes)", path=where)
    if fmt is None:
        return UnreadableImage(
            f"{path.name}: not an image (content is not JPEG, PNG, GIF, WebP, BMP, TIFF, "
            "HEIC or AVIF, whatever the name says)",
            path=where,
        )
    if fmt in ("heic", "heif", "avif"):
        return UnsupportedFormat(
            f"{path.name}: {fmt.upper()} image, and no decoder for it is installed",
            hint="Convert it to JPEG, or install a Pillow plugin for it (pillow-heif).",
            path=where,
        )
    return UnreadableImage(f"{path.name}: corrupt {fmt} (its header cannot be read)", path=where)


def _header(im: Image.Image, path: Path, cfg: DecodeConfig) -> Header:
    where = str(path)
    stored_w, stored_h = im.size  # header only: no pixels decoded yet
    if stored_w * stored_h > cfg.max_image_pixels:
        raise ImageTooLarge(
            f"{path.name}: {stored_w}x{stored_h} = {stored_w * stored_h} pixels, more than "
            f"decode.max_image_pixels ({cfg.max_image_pixels})",
            path=where,
        )
    if min(stored_w, stored_h) < cfg.min_side:
        raise ImageTooSmall(
            f"{path.name}: {stored_w}x{stored_h} pixels, smaller than decode.min_side "
            f"({cfg.min_side}) on a side",
            path=where,
        )
    exif = im.getexif()
    orientation = exif.get(_ORIENTATION, 1)
    return Header(
        format=im.format,
        mode=im.mode,
        stored=(stored_w, stored_h),
        orientation=orientation if orientation in range(1, 9) else 1,
        captured_at=_captured_at(exif),
    )


def _draft_request(stored: tuple[int, int], scale: float) -> tuple[int, int]:
    # libjpeg picks the largest 1/2, 1/4 or 1/8 reduction that stays at
    # least as large as asked for; asking for DRAFT_SLACK of the target
    # lets it land a little under max_side, and then no resize is needed.
    floor = scale * DRAFT_SLACK
    return max(1, math.ceil(stored[0] * floor)), max(1, math.ceil(stored[1] * floor))


def planned_size(
    stored: tuple[int, int], max_side: int, jpeg: bool
) -> tuple[tuple[int, int], float]:
    """(the stored-orientation size `decode` makes of a photo, its scale to the original).

    For a JPEG this is the size libjpeg's DCT scaling lands on (Pillow's
    `draft` picks the reduction the same way) when that is at most max_side,
    so a decoder without DCT scaling can produce the very same size.
    """
    w, h = stored
    scale = min(1.0, max_side / max(w, h))
    if scale < 1.0 and jpeg:
        rw, rh = _draft_request(stored, scale)
        ratio = min(w // rw, h // rh)
        s = next(s for s in (8, 4, 2, 1) if ratio >= s)
        drafted = (-(-w // s), -(-h // s))
        if max(drafted) <= max_side:
            return drafted, drafted[0] / w
    return (max(1, round(w * scale)), max(1, round(h * scale))), scale


def _decode_open(im: Image.Image, path: Path, cfg: DecodeConfig) -> Decoded:
    header = _header(im, path, cfg)
    stored_w, _ = header.stored
    scale = min(1.0, cfg.max_side / max(header.stored))
    target, _ = planned_size(header.stored, cfg.max_side, jpeg=False)
    if scale < 1.0 and im.format in ("JPEG", "MPO"):
        im.draft("RGB", _draft_request(header.stored, scale))
        if max(im.size) <= cfg.max_side:
            target = im.size
            scale = im.size[0] / stored_w
    im.load()  # a truncated file fails here; the pixels are in memory from here on
    # exif_transpose returns a copy even of an upright photo (3% of a batch's
    # CPU at 1500x1000), so only a photo that needs turning or flipping goes in.
    upright = ImageOps.exif_transpose(im) if header.orientation != 1 else im
    rgb = _to_rgb(upright)
    if header.rotated:
        target = (target[1], target[0])
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    width, height = header.upright
    return Decoded(
        image=rgb, width=width, height=height, scale=scale, captured_at=header.captured_at
    )


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples span 0..65535; Pillow's convert("L") clips them at
        # 255, which turns every 16-bit photo white.
        arr = np.asarray(im, dtype=np.float64)
        return _gray8(np.clip(arr / 257.0, 0, 255))
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        peak = float(np.nanmax(arr)) if arr.size else 0.0
        return _gray8(np.clip(arr * (255.0 if peak <= 1.0 else 1.0), 0, 255))
    if (mode == "P" and "transparency" in im.info) or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _gray8(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.nan_to_num(arr).round().astype(np.uint8), "L").convert("RGB")


def _captured_at(exif: Image.Exif) -> str | None:
    try:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
    except _DECODE_ERRORS:
        return None
    raw = sub.get(_DATETIME_ORIGINAL)
    if not isinstance(raw, str):
        return None
    try:
        when = datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None  # cameras write "0000:00:00 00:00:00" when the clock was never set
    iso = when.isoformat()
    offset = sub.get(_OFFSET_TIME_ORIGINAL)
    if isinstance(offset, str) and len(offset.strip("\x00 ")) == 6:
        iso += offset.strip("\x00 ")
    return iso


def to_bgr(img: Image.Image) -> np.ndarray:
    """A contiguous uint8 HxWx3 BGR array (OpenCV's order, what insightface expects)."""
    import cv2  # here, so that commands which never analyse faces do not load OpenCV

    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return cv2.cvtColor(np.asarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
