"""Decode ahead while the models work, with the daemon's own generator.

`daemon.phases.ahead.decode_ahead` is what the pipeline runs; here it is fed
plain paths instead of ledger rows (the same `decode`, the same
`decode.workers` threads running each phase's `prepare` right after the
decode, chunks of `clip.batch_size`), so a model benchmark measures what the
daemon does and nothing else. `run_sequential` is the same work one step
after another, the baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from daemon.config import DecodeConfig
from daemon.imaging.decode import Decoded, decode
from daemon.phases.ahead import decode_ahead

Prepare = Callable[[Decoded], Any]
Process = Callable[[list[tuple[Decoded, Any]]], None]


def _decode_prepared(path: Path, cfg: DecodeConfig, prepare: Prepare | None) -> tuple[Decoded, Any]:
    d = decode(path, cfg)
    return d, prepare(d) if prepare else None


def _process(done: list[tuple[Decoded, Any]], process: Process) -> None:
    process(done)
    for d, _ in done:
        d.image.close()


def run_overlapped(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Process,
    prepare: Prepare | None = None,
) -> None:
    """Decode (and prepare) `paths` ahead in decode_cfg.workers threads; hand each chunk on."""
    for done in decode_ahead(
        paths,
        lambda p: _decode_prepared(p, decode_cfg, prepare),
        chunk=chunk,
        workers=decode_cfg.workers,
    ):
        _process(done, process)


def run_sequential(
    paths: list[Path],
    decode_cfg: DecodeConfig,
    chunk: int,
    process: Process,
    prepare: Prepare | None = None,
) -> None:
    """The same work one step after another: decode (and prepare) a chunk, then process it."""
    for i in range(0, len(paths), chunk):
        _process([_decode_prepared(p, decode_cfg, prepare) for p in paths[i : i + chunk]], process)
