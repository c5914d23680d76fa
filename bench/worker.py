"""One side of a comparison in a process of its own.

Process-wide settings decide CPU inference speed: the OpenMP wait policy is
read once, when torch's libgomp loads, and torch's thread count is global. So
ours and the baseline each run in their own (spawned) process, where they
import and configure torch as they would alone, and the benchmark process
only sends them work and times it. Each side object lives in its worker and
answers method calls: `Worker("bench.bench_clip:Plain", weights).call("files", paths)`.
"""

from __future__ import annotations

import importlib
import multiprocessing
import traceback
from multiprocessing.connection import Connection
from typing import Any


class WorkerFailed(RuntimeError):
    pass


class Worker:
    def __init__(self, factory: str, *args: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve, args=(child, factory, args), name=factory, daemon=True
        )
        self._proc.start()
        child.close()
        self._reply()  # the side is built (models loaded) once this returns

    def call(self, method: str, *args: Any) -> Any:
        self._conn.send((method, args))
        return self._reply()

    def _reply(self) -> Any:
        try:
            ok, value = self._conn.recv()
        except EOFError as exc:
            raise WorkerFailed(f"{self._proc.name} died (exit {self._proc.exitcode})") from exc
        if not ok:
            raise WorkerFailed(f"{self._proc.name}: {value}")
        return value

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve(conn: Connection, factory: str, args: tuple[Any, ...]) -> None:
    try:
        module, _, name = factory.partition(":")
        side = getattr(importlib.import_module(module), name)(*args)
    except Exception:  # reported to the parent, which raises it there
        conn.send((False, traceback.format_exc()))
        return
    conn.send((True, None))
    while True:
        message = conn.recv()
        if message is None:
            return
        method, margs = message
        try:
            conn.send((True, getattr(side, method)(*margs)))
        except Exception:
            conn.send((False, traceback.format_exc()))
