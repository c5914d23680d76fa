"""`imgtrain queue`: list batches and steer them (cancel, retry, remove, pause, resume, stats,
cleanup).

Every action is a change in the ledger the daemon reads between steps, so it
works whether the daemon runs or not; a running daemon acts on it at its
next check (`queue.control_poll_seconds`).
"""

from __future__ import annotations

import argparse
import os
from datetime import UTC, datetime

from rich.console import Console
from rich.text import Text

from daemon.commands import context, queue_remove, render
from daemon.config import Config
from daemon.errors import Code, ImgtrainError
from daemon.ledger import admin as queue_admin
from daemon.ledger import history
from daemon.ledger.admin import BatchRow
from daemon.ledger.ledger import Ledger
from daemon.vocab import BatchState

STATES = [s.value for s in BatchState]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "queue",
        help="list batches; cancel, retry, remove, pause, resume, stats, cleanup",
        description="Without an action: list the batches.",
    )
    render.add_json_flag(p)
    p.set_defaults(func=run, action="list")
    actions = p.add_subparsers(dest="action", metavar="ACTION")

    ls = actions.add_parser("list", help="list batches (the default)")
    render.add_json_flag(ls, sub=True)
    for parser, default in ((p, None), (ls, argparse.SUPPRESS)):
        parser.add_argument(
            "--state",
            action="append",
            choices=STATES,
            default=default,
            help="only batches in this state (repeatable)",
        )
        parser.add_argument(
            "--limit", "-n", type=int, default=default, help="only the newest N batches"
        )

    c = actions.add_parser("cancel", help="cancel a waiting batch, or stop a running one")
    c.add_argument("batch_id", type=int, metavar="ID")
    r = actions.add_parser("retry", help="re-run a failed or cancelled batch's unfinished images")
    r.add_argument("batch_id", type=int, metavar="ID")
    queue_remove.add_parser(actions)
    actions.add_parser("pause", help="finish the current step, then hold the queue")
    actions.add_parser("resume", help="continue after pause")
    actions.add_parser("stats", help="batches by outcome, success rate, time per batch and image")
    cl = actions.add_parser("cleanup", help="drop old history rows (never photos or vectors)")
    cl.add_argument(
        "--days", type=_days, required=True, help="remove batches finished more than DAYS ago"
    )
    cl.add_argument("--dry-run", action="store_true", help="say what would go; change nothing")
    for parser in (c, r, cl, *(actions.choices[n] for n in ("pause", "resume", "stats"))):
        render.add_json_flag(parser, sub=True)


def _days(text: str) -> float:
    try:
        days = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {text!r}") from None
    if days < 0:
        raise argparse.ArgumentTypeError("days must be 0 or more")
    return days


def run(args: argparse.Namespace) -> int:
    config = context.load(args)
    ledger = context.open_ledger(config)
    try:
        action = args.action or "list"
        if action == "list":
            return _list(ledger, args)
        if action == "remove":
            return queue_remove.run(ledger, config, args)
        if action == "cancel":
            return _cancel(ledger, args, _daemon_running(config))
        if action == "retry":
            res = queue_admin.retry_batch(ledger, args.batch_id, config.queue.max_retries)
            return _retried(res, args.json, _daemon_running(config))
        if action in ("pause", "resume"):
            return _pause(ledger, action == "pause", args.json, _daemon_running(config))
        if action == "stats":
            return _stats(queue_admin.stats(ledger), args.json)
        if action == "cleanup":
            res = queue_admin.cleanup(ledger, args.days, dry_run=args.dry_run)
            return _cleaned(res, args.json)
        raise AssertionError(f"unknown action {action}")
    finally:
        ledger.close()


# -- list --------------------------------------------------------------------------
def _row_json(b: BatchRow) -> dict[str, object]:
    return {
        "batch_id": b.batch_id,
        "name": b.name,
        "state": b.state,
        "path": b.path,
        "images": b.images,
        "processed": b.processed,
        "duplicates": b.duplicates,
        "failed_images": b.failed_images,
        "faces": b.faces,
        "errors": b.errors,
        "attempts": b.attempts,
        "seconds": b.seconds,
        "steps_done": b.steps_done,
        "steps_total": b.steps_total,
        "created_at": render.iso(b.created_at),
        "started_at": render.iso(b.started_at),
        "finished_at": render.iso(b.finished_at),
        "error": b.error,
        "removed": queue_remove.removal_json(b.removed),
    }


REFUSALS = [Code.LIMIT_EXCEEDED, Code.LINK_OUTSIDE_ROOTS]


def _refused(ledger: Ledger) -> list[history.ErrorRow]:
    """Inbox entries the daemon will not claim as they are, still lying there."""
    rows = history.inbox_refusals(ledger, [str(c) for c in REFUSALS])
    return [r for r in rows if r.file and os.path.lexists(r.file)]


def _list(ledger: Ledger, args: argparse.Namespace) -> int:
    rows = queue_admin.list_batches(ledger, args.state, args.limit)
    paused = ledger.is_paused()
    refused = _refused(ledger)
    if args.json:
        render.print_json(
            {
                "paused": paused,
                "batches": [_row_json(b) for b in rows],
                "refused": [
                    {"at": r.at.isoformat(), "code": r.code, "message": r.message, "file": r.file}
                    for r in refused
                ],
            }
        )
        return 0
    out = render.console()
    if paused:
        out.print("[yellow]The queue is PAUSED[/]: `imgtrain queue resume` continues.")
    if not rows:
        out.print(
            "No batches in that state."
            if args.state
            else "No batches yet: drop a folder of photos into the inbox."
        )
    else:
        _table(out, rows)
    if refused:
        out.print(f"[yellow]Refused, left in the inbox ({len(refused)}):[/]")
        for r in refused:
            out.print(Text(f"  {r.code}: {r.message}"))
    return 0


def _table(out: Console, rows: list[BatchRow]) -> None:
    numbers = ("ID", "IMAGES", "FACES", "ERRORS", "TRIES", "DURATION")
    table = render.table(
        "ID", "STATE", "FOLDER", "IMAGES", "FACES", "ERRORS", "TRIES", "DURATION", "FINISHED",
        right=numbers, wrap=("FOLDER",),
    )  # fmt: skip
    for b in rows:
        state = render.styled(b.state)
        if b.state == BatchState.RUNNING and b.steps_total:
            state += f" {100 * b.steps_done / b.steps_total:.0f}%"
        if b.removed is not None:
            images, faces = str(b.removed.images), str(b.removed.faces)
        else:
            images, faces = str(b.images), str(b.faces)
        notes = [
            f"{n} {what}" for n, what in ((b.duplicates, "dup"), (b.failed_images, "failed")) if n
        ]
        if notes:
            images += f" ({', '.join(notes)})"
        table.add_row(
            str(b.batch_id),
            state,
            b.name,
            images,
            faces,
            str(b.errors),
            str(b.attempts),
            render.duration(b.seconds) if b.seconds else "-",
            render.local_time(b.finished_at),
        )
    out.print(table)
    for b in rows:
        if b.error and b.state in (BatchState.FAILED, BatchState.CANCELLED):
            out.print(Text(f"batch {b.batch_id} {b.state}: {b.error}", style="dim"))
        elif b.removed is not None or b.state == BatchState.REMOVING:
            out.print(Text(queue_remove.removal_line(b.batch_id, b.removed), style="dim"))


# -- control -------------------------------------------------------------------------
OFFLINE = "; the daemon is not running: it acts on this when it starts"


def _daemon_running(config: Config) -> bool:
    from daemon.status.reader import liveness, read_status

    try:
        status, _ = read_status(config)
    except ImgtrainError:
        return False
    return liveness(status, config).running


def _cancel(ledger: Ledger, args: argparse.Namespace, running: bool) -> int:
    state = ledger.request_cancel(args.batch_id)
    if state == BatchState.CANCELLED:
        message = f"batch {args.batch_id} cancelled (it had not started)"
    else:
        message = (
            f"batch {args.batch_id} will stop at its next step and be marked cancelled;"
            f" what it stored stays; `imgtrain queue retry {args.batch_id}` finishes it later"
        ) + ("" if running else OFFLINE)
    if args.json:
        outcome = "cancelled" if state == BatchState.CANCELLED else "cancel_requested"
        render.print_json(
            {
                "batch_id": args.batch_id,
                "state": outcome,
                "daemon_running": running,
                "message": message,
            }
        )
    else:
        render.console().print(message)
    return 0


def _retried(res: queue_admin.RetryResult, as_json: bool, running: bool) -> int:
    if as_json:
        render.print_json({**render.plain(res), "state": "waiting", "daemon_running": running})
        return 0
    retries_left = max(res.max_retries - res.attempts, 0)
    render.console().print(
        f"batch {res.batch_id} '{res.name}' ({res.previous_state}) is waiting again:"
        f" {res.images_pending} images to process ({res.images_reset} that failed get another"
        f" try); tried {_times(res.attempts)} so far, {retries_left} more"
        f" {'retry' if retries_left == 1 else 'retries'} allowed after this one"
        + ("" if running else OFFLINE)
    )
    return 0


def _times(n: int) -> str:
    return {0: "never", 1: "once", 2: "twice"}.get(n, f"{n} times")


def _pause(ledger: Ledger, pause: bool, as_json: bool, running: bool) -> int:
    was = ledger.is_paused()
    ledger.set_paused(pause)
    if pause:
        message = (
            "already paused"
            if was
            else "paused: the daemon finishes its current step, then waits;"
            " `imgtrain queue resume` continues"
        )
    else:
        message = "resumed" if was else "not paused; nothing to resume"
    if was != pause and not running:
        message += OFFLINE
    if as_json:
        render.print_json(
            {
                "paused": pause,
                "changed": was != pause,
                "daemon_running": running,
                "message": message,
            }
        )
    else:
        render.console().print(message)
    return 0


# -- stats and cleanup -------------------------------------------------------------------
def _stats(s: queue_admin.Stats, as_json: bool) -> int:
    if as_json:
        render.print_json(s)
        return 0
    out = render.console()
    b = s.batches
    out.print(
        f"Batches: {b['total']} — {b['completed']} completed, {b['failed']} failed,"
        f" {b['cancelled']} cancelled, {b['waiting']} waiting, {b['running']} running"
    )
    rate = "-" if s.success_rate is None else f"{100 * s.success_rate:.1f}%"
    out.print(f"Success rate: {rate} of {s.finished} finished batches")
    out.print(
        f"Average time: {render.duration(s.avg_seconds_per_batch)} per batch,"
        f" {render.duration(s.avg_seconds_per_image)} per image (completed batches)"
    )
    out.print(
        f"Library: {s.images} images, {s.faces} faces, {s.clusters} clusters, {s.people} people"
    )
    out.print(
        f"Skipped: {s.duplicates} duplicates, {s.failed_images} failed images; {s.errors} errors"
        " recorded"
    )
    return 0


def _cleaned(res: queue_admin.CleanupResult, as_json: bool) -> int:
    if as_json:
        data = render.plain(res)
        data["cutoff"] = datetime.fromtimestamp(res.cutoff, UTC).isoformat()
        render.print_json(data)
        return 0
    out = render.console()
    verb = "would remove" if res.dry_run else "removed"
    ids = ", ".join(str(b) for b in res.batches) or "none"
    out.print(
        f"{verb} history older than {res.days:g} days (finished before"
        f" {render.local_time(res.cutoff)}): {len(res.batches)} batches ({ids}),"
        f" {res.images} image records, {res.image_phases} image-phase records,"
        f" {res.batch_phases} batch-phase records, {res.errors} errors, {res.runs} runs"
    )
    if res.kept_for_faces:
        kept = ", ".join(str(b) for b in res.kept_for_faces)
        out.print(
            f"kept {len(res.kept_for_faces)} old batches whose faces people and clusters use"
            f" ({kept}); only their old errors go"
        )
    out.print("Photos on disk and vectors in ChromaDB are untouched; batch ids are never reused.")
    return 0
