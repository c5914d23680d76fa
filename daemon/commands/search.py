"""`imgtrain search`: photos matching a text, or photos like a given photo.

Loads the CLIP model the library is indexed with (the one the ledger records
as active: while `imgtrain reindex` runs, still the old one) and queries its
collection; works whether the daemon runs or not. The filters (--person,
--after, --before, --batch) run inside Chroma (daemon.store.search.Filters);
-o draws the results as a contact sheet.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.commands import context, render, sheets
from daemon.config import Config
from daemon.errors import NotFound
from daemon.store.search import Filters

if TYPE_CHECKING:
    from daemon.imaging.contactsheet import SheetResult
    from daemon.ledger.ledger import Ledger
    from daemon.store.search import SearchHit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="find photos by a text description or by a similar photo",
        description='Examples: imgtrain search "a dog on the beach" -n 5;'
        " imgtrain search --image holiday.jpg",
    )
    p.add_argument("text", nargs="?", help="what the photos show, in words")
    p.add_argument("--image", "-i", metavar="PATH", help="find photos that look like this one")
    p.add_argument("-n", "--limit", type=_positive, default=10, help="how many (default 10)")
    p.add_argument(
        "--person",
        action="append",
        default=[],
        metavar="NAME",
        help="only photos showing this named person (repeat: all of them together)",
    )
    p.add_argument("--after", type=_when, metavar="DATE", help="taken on or after DATE")
    p.add_argument("--before", type=_when, metavar="DATE", help="taken before DATE")
    p.add_argument(
        "--batch", action="append", type=_positive, default=[], metavar="ID", help="from batch ID"
    )
    p.add_argument("-o", "--output", type=Path, help="also draw the results as a sheet (PNG)")
    render.add_json_flag(p)
    p.set_defaults(func=run, parser=p)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _when(text: str) -> tuple[str, float]:
    from daemon.store.search import parse_when

    try:
        return text, parse_when(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _filters(
    args: argparse.Namespace, config: Config, ledger: Ledger | None
) -> tuple[Filters, dict[str, Any]]:
    """The filters, and how the JSON output shows them (empty when there are none)."""
    ids: list[int] = []
    bounds: list[int] = []  # what the ledger says can pass at most: a fast path when small
    if args.person or args.batch:
        if ledger is None:
            raise context.no_ledger(config)
        for name in args.person:
            row = ledger.people.by_name(name)
            if row is None:
                raise NotFound(
                    f"there is no person named {name!r}",
                    hint="Named people are listed by `imgtrain people`.",
                )
            ids.append(row.person_id)
        if ids:
            bounds.append(ledger.photos.count_showing(ids))
        if args.batch:
            bounds.append(ledger.photos.count_in_batches(args.batch))
    shown: dict[str, Any] = {
        "person": args.person,
        "after": args.after[0] if args.after else None,
        "before": args.before[0] if args.before else None,
        "batch": args.batch,
    }
    filters = Filters(
        tuple(ids),
        args.after[1] if args.after else None,
        args.before[1] if args.before else None,
        tuple(args.batch),
        min(bounds) if bounds else None,
    )
    return filters, {k: v for k, v in shown.items() if v}


def _narrowed(shown: dict[str, Any]) -> str:
    """The filters in words: ' with A and B, taken since X and before Y, in batch 3'."""
    parts = ["with " + " and ".join(shown["person"])] if "person" in shown else []
    when = [
        f"{word} {shown[key]}"
        for key, word in (("after", "since"), ("before", "before"))
        if key in shown
    ]
    if when:
        parts.append("taken " + " and ".join(when))
    if "batch" in shown:
        parts.append("in batch " + ", ".join(map(str, shown["batch"])))
    return " " + ", ".join(parts) if parts else ""


def run(args: argparse.Namespace) -> int:
    if (args.text is None) == (args.image is None):
        args.parser.error("give either a TEXT to search for or --image PATH (one of them)")
    if args.text is not None and not args.text.strip():
        args.parser.error("the search text is empty")
    render.quiet_logs()
    config = context.load(args)
    from daemon.ledger.ledger import Ledger
    from daemon.models import ModelRegistry
    from daemon.store import library
    from daemon.store.chroma import Store
    from daemon.store.search import search, search_image

    context.require_store(config)
    store = Store(config)
    ledger = Ledger(config.ledger_path) if config.ledger_path.exists() else None
    try:
        used = library.reader(ledger, config.clip)
        filters, shown = _filters(args, config, ledger)
    finally:
        if ledger is not None:
            ledger.close()
    clip = ModelRegistry(config).clip_for(used.clip)
    t0 = time.perf_counter()
    clip.load()
    load_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.image is not None:
        hits = search_image(
            Path(args.image),
            args.limit,
            store=store,
            clip=clip,
            decode_cfg=config.decode,
            filters=filters,
            collection=used.collection,
        )
        query: dict[str, Any] = {"image": str(Path(args.image).expanduser().resolve())}
    else:
        hits = search(
            args.text,
            args.limit,
            store=store,
            clip=clip,
            filters=filters,
            collection=used.collection,
        )
        query = {"text": args.text}
    if shown:
        query["filters"] = shown
    search_seconds = time.perf_counter() - t0
    sheet = _sheet(args, hits, query) if args.output is not None and hits else None
    size = store.count_images(used.collection)
    job = used.reindex
    if args.json:
        render.print_json(
            {
                "query": query,
                "model": clip.model_name,
                "random_weights": bool(clip.random_weights),
                "collection": used.collection,
                "reindex": None
                if job is None
                else {"model": job.model, "done": job.done, "total": job.total},
                "library_images": size,
                "results": [
                    {
                        "rank": rank,
                        "score": round(h.score, 4),
                        "path": h.path,
                        "image_id": h.image_id,
                        "batch_id": h.batch_id,
                    }
                    for rank, h in enumerate(hits, 1)
                ],
                **({"sheet": sheets.summary(sheet)} if sheet else {}),
            }
        )
        return 0
    out = render.console()
    if clip.random_weights:
        out.print(
            f"[bold yellow]CLIP {clip.model_name} has random weights (pretrained: none):"
            " these scores mean nothing.[/]"
        )
    if job is not None:
        out.print(
            f"[dim]Re-indexing with {job.model} ({job.done} of {job.total} photos): these"
            f" results come from {clip.model_name} until it is complete.[/]"
        )
    what = f'"{args.text}"' if args.text is not None else f"photos like {args.image}"
    what += _narrowed(shown)
    if not hits:
        out.print(
            f"No matches for {what}: the library is empty."
            if size == 0
            else f"No matches for {what}."
        )
        return 0
    out.print(
        f"{len(hits)} best of {size} photos for {what}"
        f" [dim](model loaded in {render.duration(load_seconds)},"
        f" search {render.duration(search_seconds)})[/]"
    )
    table = render.table("#", "SCORE", "BATCH", "PATH", right=("#", "SCORE", "BATCH"))
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.3f}", str(h.batch_id or "-"), h.path)
    out.print(table)
    if sheet is not None:
        out.print(sheets.said(sheet, "photo"))
    return 0


def _sheet(args: argparse.Namespace, hits: list[SearchHit], query: dict[str, Any]) -> SheetResult:
    what = query.get("text") or Path(query["image"]).name
    tiles = [
        sheets.photo_tile(h.image_id, h.path, f"#{rank}  {h.score:.3f}", Path(h.path).name)
        for rank, h in enumerate(hits, 1)
    ]
    title = f"search: {what}{_narrowed(query.get('filters', {}))} - {len(hits)} results"
    return sheets.write(tiles, args.output, title, whole=True)
