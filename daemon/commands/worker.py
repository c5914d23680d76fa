"""`imgtrain worker`: run the daemon's chunk jobs from Redis (workers.backend rq), anywhere."""

from __future__ import annotations

import argparse

from daemon.commands import context


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "worker",
        help="run image-phase chunk jobs from Redis for a daemon with workers.backend rq",
        description="Loads the models once, then runs chunk jobs from workers.queue on"
        " workers.redis_url, upserting into the Chroma server at store.url.",
    )
    p.add_argument("--name", default=None, help="the worker's name (default HOST.PID)")
    p.add_argument("--burst", action="store_true", help="quit once the queue is empty")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from daemon.service.logs import setup_logging
    from daemon.service.worker import run_worker

    config = context.load(args)
    setup_logging(config.log_level)
    return run_worker(config, args.name, burst=args.burst)
