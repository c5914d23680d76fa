"""4. Clustering: runs bench/bench_clustering.py (its own program) and reads its JSON.

Targets from the issue: one 100-photo batch into a library of 100,000 faces
in under 5 s, with a cost that grows far slower than the library (here: the
cost at 100,000 faces is less than a tenth of 100x the cost at 1,000), and a
full recluster of 100,000 faces in under 60 s. The real phase (SQLite ledger
+ embedded ChromaDB) is reported when the full run includes it; the engine
figures (facecluster alone) are reported always.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.common import Context, Row

BENCH_DIR = Path(__file__).resolve().parent
SCRIPT = BENCH_DIR / "bench_clustering.py"
OUTPUT = BENCH_DIR / "results" / "clustering.json"
TARGET_BATCH = 5.0
TARGET_FULL = 60.0
LIBRARY = 100_000


def run(ctx: Context) -> tuple[list[Row], dict[str, Any] | None]:
    if not SCRIPT.exists():
        return [
            Row("clustering", "bench/bench_clustering.py", None, note="not written yet: no figures")
        ], None
    args = [sys.executable, str(SCRIPT), "--skip-naive"]
    args += ["--quick", "--chroma", "10000"] if ctx.quick else ["--chroma", str(LIBRARY)]
    OUTPUT.unlink(missing_ok=True)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not OUTPUT.exists():
        tail = (proc.stdout + proc.stderr)[-2000:]
        ctx.log(f"clustering bench failed ({proc.returncode}):\n{tail}")
        return [
            Row("clustering", "bench/bench_clustering.py", None, note=f"failed: {tail[-200:]}")
        ], None
    data = json.loads(OUTPUT.read_text())
    return rows(data), data


def rows(data: dict[str, Any]) -> list[Row]:
    inc = sorted(data["incremental"], key=lambda r: r["library"])
    small, big = inc[0], inc[-1]
    growth_lib = big["library"] / small["library"]
    growth_cost = big["seconds"] / small["seconds"] if small["seconds"] else float("nan")
    full = data["full_recluster"]
    at_target = big["library"] >= LIBRARY
    out = [
        Row(
            "clustering",
            f"one 100-photo batch into {big['library']} faces (engine)",
            big["seconds"],
            "s",
            target=f"< {TARGET_BATCH:g} s at {LIBRARY}",
            met=big["seconds"] < TARGET_BATCH if at_target else None,
            note=f"{big['batch_faces']} faces, pool {big['pool']}, {big['clusters']} clusters; "
            "daemon.facecluster alone",
        ),
        Row(
            "clustering",
            f"batch cost growth, {small['library']} -> {big['library']} faces",
            growth_cost,
            "x",
            target=f"far below the library's {growth_lib:.0f}x (< {growth_lib / 10:.0f}x)",
            met=growth_cost < growth_lib / 10,
            note=f"{small['seconds'] * 1000:.1f} ms -> {big['seconds'] * 1000:.1f} ms",
        ),
        Row(
            "clustering",
            f"full recluster of {full['faces']} faces (engine)",
            full["seconds"],
            "s",
            target=f"< {TARGET_FULL:g} s at {LIBRARY}",
            met=full["seconds"] < TARGET_FULL if full["faces"] >= LIBRARY else None,
            note=f"ARI {full['ari']}, purity {full['purity']}, noise {full['noise_share']:.0%}",
        ),
    ]
    for ph in data.get("phase_chroma", []):
        n = ph["library"]
        big_enough = n >= LIBRARY
        out += [
            Row(
                "clustering",
                f"one 100-photo batch into {n} faces (phase, SQLite + Chroma)",
                ph["batch_cold_seconds"],
                "s",
                target=f"< {TARGET_BATCH:g} s at {LIBRARY}",
                met=ph["batch_cold_seconds"] < TARGET_BATCH if big_enough else None,
                note=f"first batch (pool read from Chroma); later batches "
                f"{ph['batch_warm_seconds']:.2f}s",
            ),
            Row(
                "clustering",
                f"full recluster of {n} faces (recluster_all, SQLite + Chroma)",
                ph["recluster_all_seconds"],
                "s",
                target=f"< {TARGET_FULL:g} s at {LIBRARY}",
                met=ph["recluster_all_seconds"] < TARGET_FULL if big_enough else None,
                note=f"{ph['clusters']} clusters; loading the {n} faces took "
                f"{ph['load_seconds']:.0f}s (not counted)",
            ),
        ]
    return out
