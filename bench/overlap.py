"""Decode ahead in a thread pool while the models work, exactly as the daemon's pipeline does.

`daemon.pipeline.Pipeline._run_image_phases` is tied to the ledger and the
progress channel; this is the same scheme without them (the same `decode`,
the same `decode.workers` threads, chunks of `clip.batch_size`, `RUN_AHEAD`
chunks decoded ahead), so a model benchmark measures what the daemon does
and nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from daemon.config import DecodeConfig
from daemon.imaging import Decoded, decode
from daemon.pipeline import RUN_AHEAD


def run_overlapped(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Callable[[list[Decoded]], None],
) -> None:
    """Decode `paths` ahead (decode_cfg.workers threads) and hand each chunk to `process`."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(decode_cfg.workers, thread_name_prefix="decode") as pool:
        ahead: deque[list[Future[Decoded]]] = deque()
        todo = deque(chunks)
        while todo or ahead:
            while todo and len(ahead) < RUN_AHEAD:
                ahead.append([pool.submit(decode, p, decode_cfg) for p in todo.popleft()])
            decoded = [f.result() for f in ahead.popleft()]
            process(decoded)
            for d in decoded:
                d.image.close()


def run_sequential(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Callable[[list[Decoded]], None],
) -> None:
    """The same work one step after another: decode a chunk, then process it."""
    for i in range(0, len(paths), chunk):
        decoded = [decode(p, decode_cfg) for p in paths[i : i + chunk]]
        process(decoded)
        for d in decoded:
            d.image.close()
