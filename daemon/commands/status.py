"""`imgtrain status`: the status file as a person wants to see it.

The file is the only source: this command never asks the daemon anything, so
it works the same whether the daemon runs or not. What it adds is judgement:
a file that has not been rewritten for `status.stale_after_seconds`, a pid
that is gone, or `stopped`, all mean the daemon is not running, and then old
progress is shown as history, never as live bars.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from daemon.commands import context, render
from daemon.config import Config
from daemon.errors import InvalidState, NotFound
from daemon.status.model import Status, honest_percentage
from daemon.status.reader import Liveness, liveness, read_status
from daemon.vocab import DaemonStatus


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="what the daemon is doing, from its status file")
    render.add_json_flag(p)
    p.add_argument("--watch", "-w", action="store_true", help="redraw live until Ctrl-C")
    p.add_argument(
        "--interval", type=_seconds, default=1.0, metavar="S", help="seconds between redraws"
    )
    p.set_defaults(func=run)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError("the interval must be between 0.05 and 3600 seconds")
    return value


# -- rendering -------------------------------------------------------------------
def _bars(s: Status) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, justify="right")
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    if s.batch_step is not None and s.batch_total_steps is not None:
        pct = honest_percentage(
            s.batch_step, s.batch_total_steps, s.batch_step < s.batch_total_steps
        )
        grid.add_row(
            "batch",
            render.bar(s.batch_step, s.batch_total_steps),
            f"step {s.batch_step}/{s.batch_total_steps}",
            f"{pct:.1f}%",
            "",
            "",
        )
    if s.batch_number is not None and s.batch_queue_size is not None:
        # Batches before this one, plus this one's share: full only at the very end.
        inside = (s.batch_step or 0) / s.batch_total_steps if s.batch_total_steps else 0.0
        grid.add_row(
            "queue",
            render.bar(s.batch_number - 1 + inside, s.batch_queue_size),
            f"batch {s.batch_number} of {s.batch_queue_size}",
            "",
            "",
            "",
        )
    if s.phases is not None:
        for name in ("embedding", "faces", "clustering"):
            ph = getattr(s.phases, name)
            mark = "▶ " if name == s.phase else "  "
            left = ph.eta_seconds is not None and ph.status.value in ("running", "pending")
            grid.add_row(
                f"{mark}{name}",
                render.bar(ph.step, ph.total_steps),
                f"{ph.step}/{ph.total_steps}",
                f"{ph.percentage:.1f}%",
                render.styled(ph.status.value),
                f"done in {render.duration(ph.eta_seconds)}" if left else "",
            )
    return grid


def _overall_line(s: Status) -> str | None:
    o = s.overall_progress
    parts = []
    if o.percentage is not None and s.total_steps:
        parts.append(f"Overall {o.percentage:.1f}% (step {s.current_step}/{s.total_steps})")
    if o.eta_seconds is not None and s.status == DaemonStatus.TRAINING:
        at = f" (at {render.local_time(o.eta_at, date=False)})" if o.eta_at else ""
        parts.append(f"ETA {render.duration(o.eta_seconds)}{at}")
    if s.throughput is not None and s.status in (DaemonStatus.TRAINING, DaemonStatus.PAUSED):
        parts.append(f"throughput {s.throughput:.2f} images/s")
    return "  ·  ".join(parts) or None


def _run_line(s: Status) -> str | None:
    r = s.run
    if r is None:
        return None
    return (
        f"Run since {render.local_time(r.started_at, date=False)}: {r.batches_done} of"
        f" {r.batches_total} batches done, {r.images_done} of {r.images_total} images"
    )


def _history(s: Status) -> list[RenderableType]:
    out: list[RenderableType] = []
    q = s.queue
    queue = (
        f"Queue: {q.waiting} waiting · {q.running} running · {q.completed} completed ·"
        f" {q.failed} failed · {q.cancelled} cancelled"
    )
    if q.paused:
        queue += f" · {q.paused} held by pause"
    out.append(Text(queue))
    t = s.totals
    out.append(
        Text(
            f"Library: {t.images} images · {t.faces} faces · {t.clusters} clusters ·"
            f" {t.people} people ({t.batches} batches)"
        )
    )
    if s.reindex is not None:
        out.append(_reindex_line(s))
    lb = s.last_batch
    if lb is not None:
        rate = f", {lb.images_per_second:.2f} images/s" if lb.images_per_second else ""
        out.append(
            Text.assemble(
                f"Last batch: #{lb.batch_id} '{lb.name}' ",
                (lb.state, render.STATE_STYLE.get(lb.state, "")),
                f" {render.local_time(lb.finished_at)}: {lb.images} images"
                f" ({lb.processed} processed, {lb.duplicates} duplicates,"
                f" {lb.failed_images} failed), {lb.faces} faces,"
                f" {render.duration(lb.seconds)}{rate}",
            )
        )
        if lb.error:
            out.append(Text(f"  error: {lb.error}", style="red"))
    if s.errors:
        out.append(Text(f"Recent errors ({len(s.errors)}, newest first):"))
        for e in s.errors[:5]:
            where = " ".join(
                x for x in (f"batch {e.batch_id}" if e.batch_id else "", e.file or "") if x
            )
            out.append(
                Text(f"  {render.local_time(e.at, date=False)}  {e.code}  {where}  {e.message}")
            )
        if len(s.errors) > 5:
            out.append(Text(f"  ... {len(s.errors) - 5} more in `imgtrain status --json`"))
    return out


def _reindex_line(s: Status) -> Text:
    r = s.reindex
    assert r is not None
    head = f"Re-index to {r.model}: "
    if r.state == "running":
        eta = f", ETA {render.duration(r.eta_seconds)}" if r.eta_seconds is not None else ""
        return Text(
            f"{head}{r.done}/{r.total} photos ({r.percentage:.1f}%){eta}; search uses"
            f" {r.from_model} until it is complete"
        )
    when = f" {render.local_time(r.finished_at)}" if r.finished_at else ""
    note = f": {r.message}" if r.message else ""
    return Text.assemble(
        head,
        (r.state, render.STATE_STYLE.get(r.state, "")),
        f"{when}, {r.done}/{r.total} photos{note}",
    )


def view(s: Status, live: Liveness) -> RenderableType:
    parts: list[RenderableType] = []
    if not live.running:
        parts.append(
            Text.from_markup(
                f"[bold red]NOT RUNNING[/]: the daemon is not running — {live.reason}."
            )
        )
        if s.status != DaemonStatus.STOPPED:
            was = f"Last known ({render.local_time(s.updated_at)}): {s.status.value} — {s.message}"
            if s.batch_id is not None:
                was += (
                    f" (batch {s.batch_id} '{s.current_file}' at step {s.batch_step}/"
                    f"{s.batch_total_steps}; it resumes when the daemon starts)"
                )
            parts.append(Text(was))
        parts.append(Text("Start it with `systemctl start imgtrain` or `imgtrain run`."))
        parts.extend(_history(s))
        return Group(*parts)
    up = render.duration((s.updated_at - s.daemon.started_at).total_seconds())
    parts.append(
        Text.from_markup(
            f"{render.styled(s.status.value)}: {s.message}  [dim](pid {s.daemon.pid} on"
            f" {s.daemon.hostname}, up {up}, updated {render.duration(live.age_seconds)} ago)[/]"
        )
    )
    if s.error is not None:
        parts.append(Text(f"  {s.error.code}: {s.error.message}", style="red"))
        parts.append(Text(f"  -> {s.error.hint}"))
    if s.stalled:
        since = render.local_time(s.stalled_since, date=False)
        parts.append(Text(f"STALLED since {since}: {s.stall_reason}", style="bold red"))
    if s.batch_id is not None:
        phase = f", phase {s.phase}" if s.phase else ""
        parts.append(Text(f"Batch {s.batch_id}: {s.current_file}{phase}"))
        parts.append(_bars(s))
    for line in (_overall_line(s), _run_line(s)):
        if line:
            parts.append(Text(line))
    if s.workers is not None:
        parts.extend(_workers(s))
    parts.extend(_history(s))
    return Group(*parts)


def _workers(s: Status) -> list[RenderableType]:
    from daemon.commands import workers

    info = s.workers
    assert info is not None
    if not info.reachable:
        return [Text(f"Workers: Redis at {info.redis} does not answer ({info.error})", style="red")]
    return [Text(workers.headline(info)), workers.view(info, now=s.updated_at)]


# -- the command -------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    config = context.load(args)
    if args.watch:
        return _watch(config, args.interval, as_json=args.json)
    status, text = read_status(config)
    if args.json:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    render.console().print(view(status, liveness(status, config)))
    return 0


def _frame(config: Config) -> tuple[RenderableType, str, bool]:
    """What to draw, the file's text, and whether the daemon is running."""
    try:
        status, text = read_status(config)
    except (NotFound, InvalidState) as exc:
        return Text(f"{exc.code}: {exc.message} (waiting for it)"), "", False
    live = liveness(status, config)
    return view(status, live), text, live.running


def _watch(config: Config, interval: float, *, as_json: bool) -> int:
    from rich.live import Live

    out = render.console()
    try:
        if out.is_terminal and not as_json:
            with Live(_frame(config)[0], console=out, auto_refresh=False) as live:
                while True:
                    time.sleep(interval)  # the redraw period, not a wait for a condition
                    live.update(_frame(config)[0], refresh=True)
        # Not a terminal: print each new version of the file (or of the
        # judgement that the daemon is gone) once, so a pipe or a log gets a
        # readable sequence of snapshots.
        last: tuple[str, bool] | None = None
        while True:
            frame, text, running = _frame(config)
            if (text, running) != last:
                last = (text, running)
                if as_json:
                    print(json.dumps(json.loads(text)) if text else "null", flush=True)
                else:
                    out.rule(render.local_time(time.time()))
                    out.print(frame)
                    out.file.flush()
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
