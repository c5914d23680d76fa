"""Contact sheets for the commands: tiles of faces (crops) or of whole photos.

`daemon.imaging.contactsheet` draws; this turns what the commands list (face
references, search hits, duplicate groups) into tiles. A face is cropped by
the box the faces phase stored in Chroma; a photo is drawn whole, letterboxed
into its square tile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.commands.refs import short
from daemon.imaging.contactsheet import SheetFace, SheetResult, make_sheet

__all__ = ["SheetFace", "SheetResult", "face_tiles", "photo_tile", "said", "summary", "write"]
from daemon.people.operations import FaceRef


def face_tiles(
    store: Any, faces: Sequence[FaceRef], detail: Callable[[FaceRef, Path], str]
) -> list[SheetFace]:
    """A tile per face the store has a box for, captioned with its short id and `detail`."""
    rows = store.get_faces(ids=[f.face_id for f in faces])
    meta = dict(zip(rows.ids, rows.metadatas, strict=True))
    tiles = []
    for f in faces:
        m = meta.get(f.face_id)
        if m is None or "bbox" not in m:
            continue
        path = Path(f.image_path or str(m.get("path", "")))
        tiles.append(
            SheetFace(
                face_id=f.face_id,
                path=path,
                bbox=tuple(json.loads(m["bbox"])),
                caption=short(f.face_id),
                detail=detail(f, path),
            )
        )
    return tiles


def photo_tile(key: str, path: str | Path, caption: str, detail: str) -> SheetFace:
    """A whole photo as a tile (its upright size is the box; unreadable: a 'missing' tile)."""
    try:
        with Image.open(path) as img:
            width, height = ImageOps.exif_transpose(img).size
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError):
        width = height = 1
    return SheetFace(key, Path(path), (0.0, 0.0, float(width), float(height)), caption, detail)


def write(
    tiles: Sequence[SheetFace | None], out: Path, title: str, *, whole: bool = False, **layout: Any
) -> SheetResult:
    """Draw the sheet (None: an empty cell); `whole` photos get no margin around their box."""
    return make_sheet(tiles, out, title=title, margin=0.0 if whole else 0.25, **layout)


def summary(result: SheetResult) -> dict[str, Any]:
    return {
        "path": str(result.path.resolve()),
        "tiles": result.faces,
        "columns": result.columns,
        "rows": result.rows,
        "width": result.size[0],
        "height": result.size[1],
        "missing": result.missing,
    }


def said(result: SheetResult, what: str = "face") -> str:
    note = f"; {len(result.missing)} photos could not be opened" if result.missing else ""
    what += "" if result.faces == 1 else "s"
    return (
        f"wrote {result.path} ({result.faces} {what}, {result.columns}x{result.rows} grid,"
        f" {result.size[0]}x{result.size[1]} px){note}"
    )
