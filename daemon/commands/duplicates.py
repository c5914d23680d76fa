"""`imgtrain duplicates`: groups of copies of one photo, the best copy marked; deletes nothing.

Near copies (resized, re-encoded, slightly cropped) are found by CLIP
similarity at or above `duplicates.threshold`, exact copies (the same file
dropped twice) from the ledger; see daemon.store.duplicates.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from daemon.commands import context, render, sheets
from daemon.store.duplicates import Group, Member

SHEET_COLUMNS = 6


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "duplicates",
        help="groups of copies of one photo, the best copy marked (deletes nothing)",
        description="Near copies by CLIP similarity (duplicates.threshold) and files dropped"
        " twice; the best copy has the largest resolution, then the earliest capture time.",
    )
    p.add_argument(
        "--threshold",
        type=_similarity,
        default=None,
        help="cosine similarity for a copy (default: duplicates.threshold)",
    )
    p.add_argument("-o", "--output", type=Path, help="also draw the groups as a sheet (PNG)")
    render.add_json_flag(p)
    p.set_defaults(func=run)


def _similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def run(args: argparse.Namespace) -> int:
    render.quiet_logs()
    config = context.load(args)
    from daemon.store.chroma import Store
    from daemon.store.duplicates import find_duplicates
    from daemon.store.library import active_collection

    context.require_store(config)
    threshold = args.threshold if args.threshold is not None else config.duplicates.threshold
    ledger = context.open_ledger(config)
    try:
        # The active model's vectors (the ones search uses; the same photos in every model's).
        collection = active_collection(ledger)
        images, groups = find_duplicates(Store(config), ledger, threshold, collection)
    finally:
        ledger.close()
    sheet = _sheet(groups, args.output, threshold) if args.output and groups else None
    if args.json:
        render.print_json(
            {
                "threshold": threshold,
                "images": images,
                "groups": [
                    {"files": len(g.members), "best": g.best.path, "members": g.members}
                    for g in groups
                ],
                "sheet": sheets.summary(sheet) if sheet else None,
            }
        )
        return 0
    out = render.console()
    if not groups:
        out.print(f"No duplicates among {images} photos (similarity >= {threshold}).")
        return 0
    files = sum(len(g.members) for g in groups)
    out.print(
        f"{len(groups)} groups of copies among {images} photos ({files} files, similarity >="
        f" {threshold}); * marks the copy to keep. Nothing was deleted."
    )
    for n, g in enumerate(groups, 1):
        out.print(f"[bold]group {n}[/]: {len(g.members)} files")
        for m in g.members:
            out.print(f"  {'*' if m.best else ' '} {_line(m)}")
    if sheet is not None:
        out.print(sheets.said(sheet, "photo"))
    return 0


def _size(m: Member) -> str:
    return f"{m.width}x{m.height}" if m.width and m.height else "?x?"


def _line(m: Member) -> str:
    when = (m.captured_at or "-")[:19].replace("T", " ")
    alike = "same file" if m.exact else f"{m.similarity:.3f}"
    batch = f"batch {m.batch_id}" if m.batch_id is not None else "batch -"
    return f"{_size(m):>11}  {when:19}  {batch:>9}  {alike:>9}  {m.path}"


def _sheet(groups: list[Group], out: Path, threshold: float) -> sheets.SheetResult:
    """One row (or more) per group, the best copy first in it."""
    columns = min(SHEET_COLUMNS, max(len(g.members) for g in groups))
    tiles: list[sheets.SheetFace | None] = []
    for n, g in enumerate(groups, 1):
        row = [
            sheets.photo_tile(
                f"{m.image_id}:{i}",
                m.path,
                f"{n}{' best' if m.best else ''}  {_size(m)}",
                Path(m.path).name,
            )
            for i, m in enumerate(g.members)
        ]
        tiles += row + [None] * (math.ceil(len(row) / columns) * columns - len(row))
    title = f"{len(groups)} groups of copies (similarity >= {threshold})"
    return sheets.write(tiles, out, title, whole=True, columns=columns)
