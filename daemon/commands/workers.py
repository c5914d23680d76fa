"""`imgtrain workers`: the RQ workers and the chunk queue, read from Redis.

Works whether the daemon runs or not. A worker whose heartbeats stopped is
listed as dead, never as busy (see daemon.workers.status).
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from rich.table import Table
from rich.text import Text

from daemon.commands import context, render
from daemon.status.model import WorkersInfo


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workers", help="list the RQ workers and the chunk queue (from Redis)")
    render.add_json_flag(p)
    p.set_defaults(func=run)


def view(info: WorkersInfo, *, now: datetime | None = None) -> Table | Text:
    now = now or datetime.now(UTC)
    if not info.workers:
        return Text("no worker is registered: start one with `imgtrain worker`", style="yellow")
    table = render.table("NAME", "HOST", "STATE", "JOB", "IMAGES/S", "IMAGES", "HEARTBEAT")
    for w in info.workers:
        beat = (
            f"{render.duration((now - w.last_heartbeat).total_seconds())} ago"
            if w.last_heartbeat
            else "-"
        )
        rate = "-" if w.images_per_second is None else f"{w.images_per_second:.2f}"
        table.add_row(
            w.name,
            w.host or "-",
            render.styled(w.state),
            w.current_job or "-",
            rate,
            str(w.images),
            beat,
        )
    return table


def headline(info: WorkersInfo) -> str:
    alive = sum(1 for w in info.workers if w.state != "dead")
    text = (
        f"Workers: {alive} alive of {len(info.workers)} on queue {info.queue} at {info.redis};"
        f" {info.queue_depth if info.queue_depth is not None else '?'} chunk jobs waiting"
    )
    if info.queue_wait_seconds is not None:
        text += (
            f"; per job: {render.duration(info.queue_wait_seconds)} queued"
            f" ({render.duration(info.dispatch_seconds)} dispatch),"
            f" {render.duration(info.result_delay_seconds)} result to ledger"
        )
    return text


def run(args: argparse.Namespace) -> int:
    from daemon.workers.connection import connect, redis_errors, unavailable
    from daemon.workers.status import read_workers

    config = context.load(args)
    conn = connect(config.workers)
    try:
        info = read_workers(config.workers, conn)
    except redis_errors() as exc:
        err = unavailable(config.workers, exc)
        if config.workers.backend != "rq":
            err.hint = "workers.backend is local in this config: the daemon uses no workers."
        raise err from exc
    if args.json:
        sys.stdout.write(info.model_dump_json(indent=2) + "\n")
        return 0
    out = render.console()
    out.print(Text(headline(info)))
    out.print(view(info))
    return 0
