"""python -m bench eta: how truthful the status file's ETA and percentage are.

A real daemon (default models: ViT-B-32 with seeded random weights, the
shared face pack) gets two runs of 600 generated photos each, every run two
folders of 300 dropped together, each folder mixing two sizes (a third of the
photos carry real faces, bench/assets.py):

* fresh: a new library, nothing remembered: 4032x3024 and 3000x2000 photos;
* warm: the same library, its costs remembered from the fresh run, and photos
  unlike those: 2400x1600 (a full decode plus a resize) and 1600x1200 (no
  resize at all).

The status file is sampled at 4 Hz (the latest version a close reader saw at
each quarter second). For each run: the ETA error when the overall percentage
first reached 25%, 50% and 75% (eta_seconds against the time the run actually
took from then; positive is pessimistic), and the worst gap between the
overall percentage and the share of the run's elapsed time, over every sample
after the first 5%. Times are the daemon's own (`updated_at`, `run.started_at`)
and the run ends at its first `idle` write. Every snapshot is also checked for
self-contradiction (tests/helpers.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import assets
from bench.common import Context, Row
from bench.daemon_session import Daemon, Seen
from tests.helpers import contradictions

SAMPLE_HZ = 4.0
MARKS = (25, 50, 75)
TARGET_ETA = 0.10  # at most 10% off at 25, 50 and 75%
TARGET_GAP = 5.0  # percentage points


@dataclass
class RunResult:
    name: str
    photos: int
    seconds: float
    errors: dict[int, float | None]  # mark -> relative ETA error
    worst_gap: float
    mean_gap: float
    samples: int
    contradictions: list[str]


def photo_sets(quick: bool) -> dict[str, tuple[assets.PhotoSet, assets.PhotoSet]]:
    if quick:
        return {
            "fresh": (
                assets.PhotoSet(40, 2016, 1512, seed=2),
                assets.PhotoSet(40, 1500, 1000, seed=3),
            ),
            "warm": (assets.PhotoSet(40, 1200, 800, seed=4), assets.PhotoSet(40, 800, 600, seed=5)),
        }
    return {
        "fresh": (assets.PhotoSet(300, 4032, 3024, seed=2), assets.FULL),
        "warm": (
            assets.PhotoSet(300, 2400, 1600, seed=4),
            assets.PhotoSet(300, 1600, 1200, seed=5),
        ),
    }


def _ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def _folders(a: list[Path], b: list[Path]) -> list[list[Path]]:
    """Two folders, each alternating the two sizes."""
    mixed = [p for pair in zip(a, b, strict=True) for p in pair]
    half = len(mixed) // 2
    return [mixed[:half], mixed[half:]]


def _stage(daemon: Daemon, name: str, photos: list[Path]) -> Path:
    """A folder beside the inbox of hard links, named apart (both sets have img_0000.jpg)."""
    folder = daemon.staging / name
    folder.mkdir(parents=True)
    for i, photo in enumerate(photos):
        os.link(photo, folder / f"{i:04d}-{photo.name}")
    return folder


def measure(name: str, seen: list[Seen]) -> RunResult:
    """The run's numbers from every distinct snapshot seen, resampled at 4 Hz."""
    bad = [f"{c}: {s.status.get('message')}" for s in seen for c in contradictions(s.status)]
    start = next(s for s in seen if s.status.get("run"))
    t0 = _ts(start.status["run"]["started_at"])
    end = next(s for s in seen if s.at > start.at and s.status["status"] == "idle")
    t1 = _ts(end.status["updated_at"])
    # 4 Hz: the newest snapshot as of each quarter second.
    samples: list[dict[str, Any]] = []
    i, t = 0, start.at
    while t <= end.at:
        while i + 1 < len(seen) and seen[i + 1].at <= t:
            i += 1
        samples.append(seen[i].status)
        t += 1 / SAMPLE_HZ
    busy = [s for s in samples if s["status"] == "training" and s.get("run")]
    errors: dict[int, float | None] = {}
    for mark in MARKS:
        hit = next((s for s in busy if (s["overall_progress"]["percentage"] or 0) >= mark), None)
        if hit is None:
            errors[mark] = None
            continue
        at = _ts(hit["updated_at"])
        errors[mark] = (hit["overall_progress"]["eta_seconds"] - (t1 - at)) / (t1 - at)
    gaps = []
    for s in busy:
        share = 100 * (_ts(s["updated_at"]) - t0) / (t1 - t0)
        if share > 5:
            gaps.append(s["overall_progress"]["percentage"] - share)
    return RunResult(
        name=name,
        photos=max(s.status["run"]["images_total"] for s in seen if s.status.get("run")),
        seconds=t1 - t0,
        errors=errors,
        worst_gap=max(gaps, key=abs) if gaps else float("nan"),
        mean_gap=sum(gaps) / len(gaps) if gaps else float("nan"),
        samples=len(samples),
        contradictions=bad,
    )


def run(ctx: Context) -> list[Row]:
    sets = photo_sets(ctx.quick)
    root = ctx.work / "eta"
    daemon = Daemon(root, assets.daemon_config(root, inbox={"settle_seconds": 1.0}))
    ctx.log(f"eta: daemon ready in {daemon.start():.1f}s")
    results = []
    try:
        for name, (a, b) in sets.items():
            pa, pb = a.paths(), b.paths()
            staged = [_stage(daemon, f"{name}-{k}", f) for k, f in enumerate(_folders(pa, pb))]
            done = (daemon.watcher.latest() or {}).get("queue", {}).get("completed", 0)
            t = daemon.drop(staged[0])
            for folder in staged[1:]:
                daemon.drop(folder)
            goal = done + len(staged)
            daemon.wait(
                lambda s, n=goal: s["status"] == "idle" and s["queue"]["completed"] >= n,
                3600,
                f"the {name} run to finish",
            )
            seen = daemon.watcher.since(t)
            _save_trace(ctx.work / f"eta-{name}.jsonl", seen)
            result = measure(name, seen)
            results.append(result)
            ctx.log(
                f"eta {name}: {result.photos} photos of {a.width}x{a.height} and"
                f" {b.width}x{b.height} in {result.seconds:.0f}s; errors"
                f" {_fmt_errors(result.errors)}; gap worst {result.worst_gap:+.1f} mean"
                f" {result.mean_gap:+.1f} points; {len(result.contradictions)} contradictions"
            )
    finally:
        daemon.stop()
    return [row for r in results for row in _rows(r, sets[r.name])]


def _save_trace(path: Path, seen: list[Seen]) -> None:
    """Every snapshot of the run, one JSON line each, for looking into a result
    (kept with `--keep`)."""
    with path.open("w") as f:
        for s in seen:
            f.write(json.dumps({"at": s.at, "status": s.status}) + "\n")


def _fmt_errors(errors: dict[int, float | None]) -> str:
    return " / ".join("-" if e is None else f"{100 * e:+.0f}%" for e in errors.values())


def _rows(r: RunResult, sets: tuple[assets.PhotoSet, assets.PhotoSet]) -> list[Row]:
    a, b = sets
    what = f"{r.photos} photos ({a.width}x{a.height} + {b.width}x{b.height}, two folders)"
    worst_eta = max((abs(e) for e in r.errors.values() if e is not None), default=None)
    return [
        Row(
            f"ETA error at 25/50/75%, {r.name}",
            what,
            None if worst_eta is None else round(100 * worst_eta, 1),
            "% worst",
            target=f"<= {100 * TARGET_ETA:.0f}%",
            met=worst_eta is not None and worst_eta <= TARGET_ETA,
            note=f"{r.name}: ETA error {_fmt_errors(r.errors)} at 25/50/75% of a"
            f" {r.seconds:.0f} s run",
        ),
        Row(
            f"overall % minus elapsed share, {r.name}",
            "worst sample after the first 5%",
            round(r.worst_gap, 1),
            "points",
            target=f"within {TARGET_GAP:.0f}",
            met=abs(r.worst_gap) <= TARGET_GAP,
            note=f"{r.name}: mean gap {r.mean_gap:+.1f} points over {r.samples} samples at 4 Hz",
        ),
        Row(
            f"status writes that contradict themselves, {r.name}",
            "every snapshot seen",
            float(len(r.contradictions)),
            "",
            target="0",
            met=not r.contradictions,
            note="; ".join(r.contradictions[:3]),
        ),
    ]
