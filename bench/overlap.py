"""Decode ahead in a thread pool while the models work, exactly as the daemon's pipeline does.

`daemon.pipeline.Pipeline._run_image_phases` is tied to the ledger and the
progress channel; this is the same scheme without them (the same `decode`,
the same `decode.workers` threads running each phase's `prepare` right after
the decode, chunks of `clip.batch_size`, `RUN_AHEAD` chunks decoded ahead), so
a model benchmark measures what the daemon does and nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from daemon.config import DecodeConfig
from daemon.imaging.decode import Decoded, decode
from daemon.phases.pipeline import RUN_AHEAD

Prepare = Callable[[Decoded], Any]
Process = Callable[[list[tuple[Decoded, Any]]], None]


def _decode_prepared(path: Path, cfg: DecodeConfig, prepare: Prepare | None) -> tuple[Decoded, Any]:
    d = decode(path, cfg)
    return d, prepare(d) if prepare else None


def run_overlapped(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Process,
    prepare: Prepare | None = None,
) -> None:
    """Decode (and prepare) `paths` ahead in decode_cfg.workers threads; hand each chunk on."""
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    with ThreadPoolExecutor(decode_cfg.workers, thread_name_prefix="decode") as pool:
        ahead: deque[list[Future[tuple[Decoded, Any]]]] = deque()
        todo = deque(chunks)
        while todo or ahead:
            while todo and len(ahead) < RUN_AHEAD:
                ahead.append(
                    [pool.submit(_decode_prepared, p, decode_cfg, prepare) for p in todo.popleft()]
                )
            done = [f.result() for f in ahead.popleft()]
            process(done)
            for d, _ in done:
                d.image.close()


def run_sequential(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Process,
    prepare: Prepare | None = None,
) -> None:
    """The same work one step after another: decode (and prepare) a chunk, then process it."""
    for i in range(0, len(paths), chunk):
        done = [_decode_prepared(p, decode_cfg, prepare) for p in paths[i : i + chunk]]
        process(done)
        for d, _ in done:
            d.image.close()
