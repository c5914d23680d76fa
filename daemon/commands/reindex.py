"""`imgtrain reindex`: index the library with the CLIP model the config names now.

The command only records the request in the ledger; the daemon does the work
in the background, between batches (`daemon.phases.reindex`), and search
keeps using the old model until the new collection is complete. Run again,
it says how far it is; `--drop-old` deletes the old model's vectors once the
new ones are complete (at once, if they already are); `--cancel` stops it
(what it stored stays, and asking again resumes).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from daemon.commands import context, render
from daemon.config import Config
from daemon.errors import ImgtrainError, InvalidState
from daemon.ledger.ledger import Ledger
from daemon.ledger.reindexes import ReindexRow
from daemon.store import library
from daemon.store.chroma import Store
from daemon.vocab import ClipModelState, ReindexState


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reindex",
        help="index every photo again with the CLIP model the config names (in the background)",
        description="After changing clip.model / clip.pretrained in the config: the daemon embeds"
        " the library again into the new model's own collection, between batches; search uses"
        " the old one until the new one is complete. Run it again to see how far it is.",
    )
    p.add_argument(
        "--drop-old",
        action="store_true",
        help="delete the old model's vectors once the new ones are complete (now, if they are)",
    )
    p.add_argument(
        "--cancel",
        action="store_true",
        help="stop the running re-index (what it stored stays; asking again resumes it)",
    )
    render.add_json_flag(p)
    p.set_defaults(func=run, parser=p)


@dataclass
class Outcome:
    action: str  # started | running | cancelled | nothing | dropped
    model: str  # the model the config names
    active: str  # the model search uses now
    reindex: ReindexRow | None
    message: str
    dropped: list[str] = field(default_factory=list)  # models whose collection was deleted


def run(args: argparse.Namespace) -> int:
    if args.cancel and args.drop_old:
        args.parser.error("--cancel and --drop-old do not go together")
    render.quiet_logs()
    config = context.load(args)
    context.require_store(config, ": nothing to re-index")
    ledger = context.open_ledger(config)
    try:
        outcome = request(ledger, Store(config), config, cancel=args.cancel, drop_old=args.drop_old)
    finally:
        ledger.close()
    running = _daemon_running(config)
    if outcome.action in ("started", "running") and not running:
        outcome.message += "; the daemon is not running: it does this when it starts"
    if args.json:
        render.print_json({**render.plain(outcome), "daemon_running": running})
    else:
        render.console().print(outcome.message, highlight=False, markup=False)
    return 0


def request(
    ledger: Ledger, store: Store, config: Config, *, cancel: bool = False, drop_old: bool = False
) -> Outcome:
    """Record what was asked for; the daemon does the rest."""
    name = library.model_name(config.clip)
    with ledger.transaction():  # two commands at once cannot both start one
        active = library.active_model(ledger, store, config.clip)
        job = ledger.reindexes.open()
        if cancel:
            return _cancel(ledger, job, name, active.model)
        if job is not None:
            return _running(ledger, job, name, active.model, drop_old)
        if name == active.model:
            return _nothing(ledger, store, name, drop_old)
        settings = library.settings_of(config.clip)
        row = ledger.clip_models.get(name)
        if row is None:
            row = ledger.clip_models.add(
                name, library.collection_for(name), settings, ClipModelState.BUILDING
            )
        else:
            ledger.clip_models.update(name, settings=settings, state=ClipModelState.BUILDING)
        job = ledger.reindexes.create(name, active.model, drop_old=drop_old)
    total = ledger.reindexes.library_size()
    have = store.count_images(row.collection)
    ledger.reindexes.advance(job.reindex_id, done=min(have, total), total=total)
    job = ledger.reindexes.get(job.reindex_id) or job
    already = f" ({have} already in its collection)" if have else ""
    return Outcome(
        "started",
        name,
        active.model,
        job,
        f"re-indexing {total} photos with {name} in the background{already}; search uses"
        f" {active.model} until it is complete"
        + ("; then its vectors are deleted" if drop_old else "")
        + ". Follow it with `imgtrain status`",
    )


def _cancel(ledger: Ledger, job: ReindexRow | None, name: str, active: str) -> Outcome:
    if job is None:
        return Outcome("nothing", name, active, ledger.reindexes.last(), "no re-index is running")
    ledger.reindexes.finish(job.reindex_id, ReindexState.CANCELLED, "cancelled")
    return Outcome(
        "cancelled",
        name,
        active,
        ledger.reindexes.get(job.reindex_id),
        f"re-index to {job.model} cancelled at {job.done} of {job.total} photos; what it stored"
        f" stays (`imgtrain reindex` with {job.model} configured resumes it); search uses {active}",
    )


def _running(ledger: Ledger, job: ReindexRow, name: str, active: str, drop_old: bool) -> Outcome:
    if job.model != name:
        raise InvalidState(
            f"a re-index to {job.model} is running, and the config names {name}",
            hint=f"Set clip.model/clip.pretrained back to {job.model}, or cancel it"
            " (imgtrain reindex --cancel) and run `imgtrain reindex` again.",
        )
    if drop_old and not job.drop_old:
        ledger.reindexes.set_drop_old(job.reindex_id)
    pct = f" ({100 * job.done / job.total:.1f}%)" if job.total else ""
    then = "; then its vectors are deleted" if drop_old or job.drop_old else ""
    return Outcome(
        "running",
        name,
        active,
        ledger.reindexes.get(job.reindex_id),
        f"re-index to {name} running: {job.done} of {job.total} photos{pct}; search uses"
        f" {active} until it is complete{then}",
    )


def _nothing(ledger: Ledger, store: Store, name: str, drop_old: bool) -> Outcome:
    old = [
        r
        for r in ledger.clip_models.all()
        if r.state in (ClipModelState.KEPT, ClipModelState.BUILDING)
    ]
    last = ledger.reindexes.last()
    if drop_old and old:
        for r in old:
            library.drop(ledger, store, r)
        models = ", ".join(r.model for r in old)
        return Outcome(
            "dropped",
            name,
            name,
            last,
            f"the library is indexed with {name}; deleted the vectors of {models}",
            [r.model for r in old],
        )
    kept = (
        f"; the vectors of {', '.join(r.model for r in old)} are kept (--drop-old deletes them)"
        if old
        else ""
    )
    return Outcome("nothing", name, name, last, f"the library is indexed with {name} already{kept}")


def _daemon_running(config: Config) -> bool:
    from daemon.status.reader import liveness, read_status

    try:
        status, _ = read_status(config)
    except ImgtrainError:
        return False
    return liveness(status, config).running
