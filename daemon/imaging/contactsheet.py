"""Contact sheets: a grid of face crops with captions, saved as a PNG.

People would rather look at faces than read ids, so `imgtrain people sheet`
draws one. Crops come from the original photos, using the bounding box the
faces phase stored (original, upright pixels, hence the EXIF rotation here
too), widened by a margin so a face is seen with some of its surroundings.
A photo that cannot be opened any more gives a grey tile saying so; the
sheet is still made.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from daemon.errors import InsufficientData

BACKGROUND = (250, 250, 250)
MISSING = (200, 200, 200)
INK = (20, 20, 20)
DIM_INK = (90, 90, 90)


@dataclass(frozen=True)
class SheetFace:
    face_id: str
    path: Path  # the original photo
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in original upright pixels
    caption: str  # first caption line (e.g. the short face id)
    detail: str = ""  # second line (e.g. score, photo name)


@dataclass(frozen=True)
class SheetLayout:
    tile: int
    columns: int
    rows: int
    pad: int
    caption_height: int
    title_height: int

    @property
    def size(self) -> tuple[int, int]:
        width = self.pad + self.columns * (self.tile + self.pad)
        height = (
            self.title_height + self.pad + self.rows * (self.tile + self.caption_height + self.pad)
        )
        return width, height

    def origin(self, index: int) -> tuple[int, int]:
        row, col = divmod(index, self.columns)
        x = self.pad + col * (self.tile + self.pad)
        y = self.title_height + self.pad + row * (self.tile + self.caption_height + self.pad)
        return x, y


@dataclass
class SheetResult:
    path: Path
    faces: int
    columns: int
    rows: int
    size: tuple[int, int]
    missing: list[str] = field(default_factory=list)  # face ids whose photo could not be read


def layout(n: int, *, tile: int = 160, columns: int | None = None) -> SheetLayout:
    """Near-square grid, at most 8 wide unless asked."""
    if n <= 0:
        raise ValueError("a contact sheet needs at least one face")
    cols = columns or min(8, math.ceil(math.sqrt(n)))
    cols = max(1, min(cols, n))
    font_px = _font_px(tile)
    return SheetLayout(
        tile=tile,
        columns=cols,
        rows=math.ceil(n / cols),
        pad=max(6, tile // 20),
        caption_height=2 * (font_px + 4) + 2,
        title_height=font_px * 2 + 12,
    )


def _font_px(tile: int) -> int:
    return max(10, tile // 12)


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def crop_face(photo: Image.Image, bbox: Sequence[float], tile: int, margin: float) -> Image.Image:
    """The face plus `margin` of its size on each side, squared, resized to `tile`.

    A face at the photo's edge stays centred: the part of the square outside
    the photo is filled with the sheet's background.
    """
    x1, y1, x2, y2 = (float(v) for v in bbox)
    side = max(round(max(x2 - x1, y2 - y1) * (1 + 2 * margin)), 1)
    left = round((x1 + x2) / 2 - side / 2)
    top = round((y1 + y2) / 2 - side / 2)
    inside = (
        max(left, 0),
        max(top, 0),
        min(left + side, photo.width),
        min(top + side, photo.height),
    )
    square = Image.new("RGB", (side, side), BACKGROUND)
    if inside[0] < inside[2] and inside[1] < inside[3]:
        square.paste(photo.crop(inside), (inside[0] - left, inside[1] - top))
    return square.resize((tile, tile), Image.Resampling.LANCZOS)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: object, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    # ASCII dots: the built-in font has no glyph for an ellipsis.
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def make_sheet(
    faces: Sequence[SheetFace | None],
    out: Path,
    *,
    title: str,
    tile: int = 160,
    columns: int | None = None,
    margin: float = 0.25,
) -> SheetResult:
    """Draw the faces in a captioned grid and save it as PNG at `out`; None leaves a gap."""
    if not any(faces):
        raise InsufficientData(
            f"there are no faces to draw for {title}",
            hint="List people and clusters with their face counts: `imgtrain people`.",
        )
    grid = layout(len(faces), tile=tile, columns=columns)
    sheet = Image.new("RGB", grid.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font_px = _font_px(tile)
    font, title_font = _font(font_px), _font(round(font_px * 1.4))
    draw.text(
        (grid.pad, 6),
        _fit(draw, title, title_font, grid.size[0] - 2 * grid.pad),
        fill=INK,
        font=title_font,
    )
    missing: list[str] = []
    photos: dict[Path, Image.Image | None] = {}
    for index, face in enumerate(faces):
        if face is None:
            continue
        x, y = grid.origin(index)
        photo = photos.get(face.path)
        if face.path not in photos:
            photo = photos[face.path] = _open(face.path)
        if photo is None:
            missing.append(face.face_id)
            draw.rectangle([x, y, x + tile - 1, y + tile - 1], fill=MISSING)
            draw.text((x + 6, y + tile // 2 - font_px), "photo missing", fill=INK, font=font)
        else:
            sheet.paste(crop_face(photo, face.bbox, tile, margin), (x, y))
        draw.text((x, y + tile + 3), _fit(draw, face.caption, font, tile), fill=INK, font=font)
        draw.text(
            (x, y + tile + 3 + font_px + 4),
            _fit(draw, face.detail, font, tile),
            fill=DIM_INK,
            font=font,
        )
    for photo in photos.values():
        if photo is not None:
            photo.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, "PNG")
    return SheetResult(
        path=out,
        faces=sum(1 for f in faces if f is not None),
        columns=grid.columns,
        rows=grid.rows,
        size=grid.size,
        missing=missing,
    )


def _open(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as img:
            upright = ImageOps.exif_transpose(img)
            return upright.convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return None
