"""Decode ahead: work on chunk i+1 in a thread pool while the models work on chunk i.

One generator, used by the pipeline and by the benchmarks, so a benchmark
measures exactly the scheme the daemon runs. Each item is handed to `work`
(decode, then each phase's `prepare`) in `workers` threads, at most
`run_ahead` chunks ahead of the consumer; chunks come out in order, as lists
of `work`'s results. Closing the generator early (an exception in the
consumer, a shutdown) cancels what was not started yet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

RUN_AHEAD = 2  # chunks decoded ahead of the models: enough to hide decoding, bounded memory


def chunked(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def decode_ahead(
    items: Sequence[T],
    work: Callable[[T], R],
    *,
    chunk: int,
    workers: int,
    run_ahead: int = RUN_AHEAD,
) -> Iterator[list[R]]:
    todo = deque(chunked(items, chunk))
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        ahead: deque[list[Future[R]]] = deque()
        try:
            while todo or ahead:
                while todo and len(ahead) < run_ahead:
                    ahead.append([pool.submit(work, item) for item in todo.popleft()])
                yield [fut.result() for fut in ahead.popleft()]
        finally:
            for pending in ahead:
                for fut in pending:
                    fut.cancel()
