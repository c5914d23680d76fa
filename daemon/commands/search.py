"""`imgtrain search`: photos matching a text, or photos like a given photo.

Loads the CLIP model the library is indexed with (the one the ledger records
as active: while `imgtrain reindex` runs, still the old one) and queries its
collection; works whether the daemon runs or not.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from daemon.commands import context, render
from daemon.errors import NotFound


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

    if not config.store.url and not config.chroma_path.exists():
        raise NotFound(
            f"there is no vector store at {config.chroma_path}",
            hint="Start the daemon and drop photos into the inbox first,"
            " or pass the daemon's config with --config.",
        )
    store = Store(config)
    ledger = Ledger(config.ledger_path) if config.ledger_path.exists() else None
    try:
        used = library.reader(ledger, config.clip)
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
            collection=used.collection,
        )
        query = {"image": str(Path(args.image).expanduser().resolve())}
    else:
        hits = search(args.text, args.limit, store=store, clip=clip, collection=used.collection)
        query = {"text": args.text}
    search_seconds = time.perf_counter() - t0
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
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("#", justify="right")
    table.add_column("SCORE", justify="right")
    table.add_column("BATCH", justify="right")
    table.add_column("PATH", no_wrap=True)
    for rank, h in enumerate(hits, 1):
        table.add_row(str(rank), f"{h.score:.3f}", str(h.batch_id or "-"), h.path)
    out.print(table)
    return 0
