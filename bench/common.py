"""What every benchmark shares: result rows, interleaved repeats, medians, the machine.

This machine is shared and small (2 cores), so a single timing says little.
Every figure is a median over repeats, and every comparison with a baseline
is measured side by side: ours and the baseline take turns (ABAB...), and the
ratio is the median of the per-round ratios, so a neighbour's burst of load
hits both sides of a round rather than one side of the whole comparison.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One line of the results table.

    `higher_is_better` decides how `ratio` reads: for throughput ours/baseline,
    for a time baseline/ours, so a ratio above 1 always means ours is better.
    A row without a baseline has no ratio; `met` is None when the row has no target.
    """

    benchmark: str
    figure: str
    ours: float | None
    unit: str = ""
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Paired:
    """Medians of interleaved repeats of ours and a baseline, and the median ratio."""

    ours: float
    baseline: float
    ratio: float
    ours_samples: list[float]
    baseline_samples: list[float]


def interleaved(
    reps: int,
    ours: Callable[[int], float],
    baseline: Callable[[int], float],
    higher_is_better: bool = True,
) -> Paired:
    """Run ours(i) and baseline(i) alternately `reps` times; each returns one figure.

    The order inside a round alternates too (ours first on even rounds), so a
    drift in the machine's load does not always favour the same side.
    """
    a: list[float] = []
    b: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            a.append(ours(i))
            b.append(baseline(i))
        else:
            b.append(baseline(i))
            a.append(ours(i))
    ratios = [
        (x / y if higher_is_better else y / x) if x and y else 0.0
        for x, y in zip(a, b, strict=True)
    ]
    return Paired(statistics.median(a), statistics.median(b), statistics.median(ratios), a, b)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; values need not be sorted."""
    s = sorted(values)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class Stopwatch:
    """Wall and process CPU time of a block (`with Stopwatch() as sw: ...; sw.wall`)."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._t0
        self.cpu = time.process_time() - self._c0


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and load, for the results header."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Flags"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = set(str(info.pop("Flags", "")).split())
    info["avx512_bf16"] = "avx512_bf16" in flags or "amx_bf16" in flags
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info["cpus_usable"] = len(os.sched_getaffinity(0))
    info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "open_clip_torch", "onnxruntime", "insightface", "chromadb", "pillow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "missing"
    return out


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    a = abs(value)
    if 0.99 <= a < 1.0:  # cosines and recalls: the digits that matter are far right
        text = f"{value:.5f}"
    elif a >= 1000:
        text = f"{value:.0f}"
    elif a >= 0.01 or a == 0:
        text = f"{value:.3g}"
    else:
        text = f"{value:.2e}"
    return f"{text} {unit}".strip()


@dataclass
class Context:
    """What the runner hands every benchmark."""

    quick: bool
    photo_set: Any  # bench.assets.PhotoSet (FULL or QUICK), generated on first use of `photos`
    shared_photos: list[Path]  # ../shared/photos, real photos with known faces
    work: Path  # a scratch directory for this run, removed afterwards
    log: Callable[[str], None] = print

    @cached_property
    def photos(self) -> list[Path]:
        """The generated set's files (made once into bench/.cache/ on first use)."""
        return self.photo_set.paths()

    def reps(self, full: int, quick: int = 2) -> int:
        return quick if self.quick else full
