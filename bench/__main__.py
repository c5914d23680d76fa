"""python -m bench [NAME ...] [--quick]: run the benchmarks, print one table, save it.

Names: clip, faces, e2e, status, pickup, idle, memory, search, clustering, workers, eta, gpu
(default: all). e2e, status, pickup, idle and memory share one set of daemon
runs, so asking for several of them costs little more than one. gpu measures
the CLIP and faces phases on CUDA next to the CPU, and without a GPU says so
in one row. The photos are generated on first use, so `gpu` without a GPU
does not wait for them.

Writes bench/results/latest.json and bench/results/latest.md on every run,
and bench/RESULTS.md (the committed copy) on a full run of everything.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import assets
from bench.common import Context, Row, fmt, machine, versions

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
COMMITTED = BENCH_DIR / "RESULTS.md"
DAEMON_PARTS = ("e2e", "status", "pickup", "idle", "memory")
NAMES = ("clip", "faces", "search", "clustering", "workers", "eta", *DAEMON_PARTS, "gpu")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(NAMES))
    ap.add_argument("--quick", action="store_true", help="24 smaller photos, fewer rounds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in NAMES]
    if unknown:
        ap.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    names = [n for n in NAMES if n in args.names] if args.names else list(NAMES)
    full = not args.quick and set(names) == set(NAMES)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])

    t0 = time.monotonic()
    started = datetime.now(UTC)

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.0f}s] {msg}", flush=True)

    spec = assets.QUICK if args.quick else assets.FULL
    work = assets.CACHE / f"work-{started:%Y%m%d-%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        quick=args.quick,
        photo_set=spec,
        shared_photos=assets.shared_photos(),
        work=work,
        log=log,
    )
    info: dict[str, Any] = {"machine": machine(), "versions": versions()}
    log(f"{spec.count} photos of {spec.width}x{spec.height}; running {', '.join(names)}")
    rows: list[Row] = []
    extra: dict[str, Any] = {}
    failed: list[str] = []
    try:
        for name in names:
            if name in DAEMON_PARTS:
                continue
            try:
                rows += _run_one(name, ctx, extra)
            except Exception as exc:  # one broken benchmark must not lose the others
                failed.append(name)
                log(f"{name} FAILED: {exc}\n{traceback.format_exc()}")
                rows.append(Row(name, "failed", None, note=f"{type(exc).__name__}: {exc}"))
        daemon_parts = {n for n in names if n in DAEMON_PARTS}
        if daemon_parts:
            from bench import bench_daemon

            try:
                rows += bench_daemon.run(ctx, daemon_parts)
            except Exception as exc:
                failed.append("daemon")
                log(f"daemon benchmarks FAILED: {exc}\n{traceback.format_exc()}")
                rows.append(Row("daemon", "failed", None, note=f"{type(exc).__name__}: {exc}"))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.monotonic() - t0
    header = {
        "date": started.isoformat(timespec="seconds"),
        "command": command,
        "seconds": round(seconds, 1),
        "quick": args.quick,
        "photos": {"count": spec.count, "size": [spec.width, spec.height]},
        **info,
    }
    table = render_table(rows)
    print("\n" + table)
    print(f"\n{len(rows)} rows in {seconds / 60:.1f} min; targets met: {_score(rows)}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {**header, "rows": [r.as_dict() for r in rows], "extra": extra, "failed": failed}
    (RESULTS / "latest.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md = render_markdown(header, rows)
    (RESULTS / "latest.md").write_text(md)
    if full:
        COMMITTED.write_text(md)
        print(f"wrote {RESULTS / 'latest.json'} and {COMMITTED}")
    else:
        print(f"wrote {RESULTS / 'latest.json'} and {RESULTS / 'latest.md'} (partial run)")
    return 1 if failed else 0


def _run_one(name: str, ctx: Context, extra: dict[str, Any]) -> list[Row]:
    ctx.log(f"--- {name}")
    if name == "clip":
        from bench import bench_clip

        return bench_clip.run(ctx)
    if name == "faces":
        from bench import bench_faces

        return bench_faces.run(ctx)
    if name == "search":
        from bench import bench_search

        return bench_search.run(ctx)
    if name == "gpu":
        from bench import bench_gpu

        return bench_gpu.run(ctx)
    if name == "workers":
        from bench import bench_workers

        return bench_workers.run(ctx)
    if name == "eta":
        from bench import bench_eta

        return bench_eta.run(ctx)
    from bench import run_clustering

    rows, raw = run_clustering.run(ctx)
    extra["clustering"] = raw
    return rows


def _met(row: Row) -> str:
    return {True: "yes", False: "NO", None: ""}[row.met]


def _score(rows: list[Row]) -> str:
    judged = [r for r in rows if r.met is not None]
    return f"{sum(1 for r in judged if r.met)}/{len(judged)}"


def _cells(row: Row) -> list[str]:
    return [
        row.benchmark,
        row.figure,
        fmt(row.ours, row.unit),
        fmt(row.baseline, row.unit),
        "-" if row.ratio is None else f"{row.ratio:.2f}x",
        row.target,
        _met(row),
    ]


HEADS = ["benchmark", "figure", "ours", "baseline", "ratio", "target", "met?"]


def render_table(rows: list[Row]) -> str:
    cells = [HEADS, *(_cells(r) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(header: dict[str, Any], rows: list[Row]) -> str:
    m = header["machine"]
    out = [
        "# Benchmark results",
        "",
        f"- Date: {header['date']}",
        f"- Machine: {m.get('Model name', '?')}, {m.get('CPU(s)', '?')} CPUs, "
        f"{m.get('ram_gb', '?')} GB RAM, AVX-512 BF16: {'yes' if m.get('avx512_bf16') else 'no'};"
        f" load average at start {m.get('loadavg_at_start')} (shared machine)",
        f"- Command: `{header['command'].strip()}` (`make bench`), "
        f"{header['seconds'] / 60:.1f} min",
        f"- Photos: {header['photos']['count']} generated JPEGs of "
        f"{header['photos']['size'][0]}x{header['photos']['size'][1]} (bench/assets.py, fixed "
        "seed) and the 18 real photos in ../shared/photos",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in header["versions"].items()),
        f"- Targets met: {_score(rows)}",
        "",
        "Every figure is a median over rounds; ours and the baseline alternate within each",
        "round and the ratio is the median of the per-round ratios (above 1 = ours better).",
        "",
        "| # | " + " | ".join(HEADS) + " |",
        "|---|" + "|".join("---" for _ in HEADS) + "|",
    ]
    for i, r in enumerate(rows, 1):
        out.append(f"| {i} | " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |")
    out += ["", "Notes:", ""]
    out += [f"{i}. {r.note}" for i, r in enumerate(rows, 1) if r.note]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
