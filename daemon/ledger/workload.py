"""What the ETA needs from the ledger: the run's images still to process, and the cost memory.

Reached as functions over a `Ledger`, like `daemon.ledger.history`: the work
still pending in each batch (with each file's size, for the decode estimate),
how many images each batch has through every image phase, when the run
began, and the regressions remembered between runs.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from daemon.ledger.ledger import Ledger


@dataclass(frozen=True)
class PendingFile:
    image_id: int
    rel_path: str
    size: int  # bytes
    phases: frozenset[str]  # image phases still pending for it


def pending_files(ledger: Ledger, batch_ids: list[int]) -> dict[int, list[PendingFile]]:
    """{batch_id: images with an image phase pending, in the order the pipeline takes them}."""
    out: dict[int, list[PendingFile]] = defaultdict(list)
    if not batch_ids:
        return out
    marks = ",".join("?" * len(batch_ids))
    for r in ledger.query(
        "SELECT i.batch_id, i.image_id, i.rel_path, i.size, GROUP_CONCAT(p.phase) AS phases"
        " FROM images i JOIN image_phases p USING(image_id)"
        f" WHERE i.batch_id IN ({marks}) AND p.state='pending'"
        " GROUP BY i.image_id ORDER BY i.image_id",
        batch_ids,
    ):
        out[r["batch_id"]].append(
            PendingFile(r["image_id"], r["rel_path"], r["size"], frozenset(r["phases"].split(",")))
        )
    return out


def image_counts(ledger: Ledger, batch_ids: list[int]) -> dict[int, tuple[int, int]]:
    """{batch_id: (images through every image phase, images any image phase processes)}."""
    out = dict.fromkeys(batch_ids, (0, 0))
    if not batch_ids:
        return out
    marks = ",".join("?" * len(batch_ids))
    for r in ledger.query(
        "SELECT i.batch_id, COUNT(DISTINCT i.image_id) AS total,"
        " COUNT(DISTINCT CASE WHEN p.state='pending' THEN i.image_id END) AS pending"
        " FROM images i JOIN image_phases p USING(image_id)"
        f" WHERE i.batch_id IN ({marks}) AND p.state != 'skipped' GROUP BY i.batch_id",
        batch_ids,
    ):
        out[r["batch_id"]] = (int(r["total"]) - int(r["pending"]), int(r["total"]))
    return out


def run_started_at(ledger: Ledger, run_id: int) -> float | None:
    row = ledger.conn.execute("SELECT started_at FROM runs WHERE run_id=?", (run_id,)).fetchone()
    return None if row is None else float(row["started_at"])


def cost_memory(ledger: Ledger) -> dict[str, str]:
    return {r["name"]: r["model"] for r in ledger.query("SELECT name, model FROM cost_models")}


def save_cost_memory(ledger: Ledger, memory: dict[str, str]) -> None:
    now = time.time()
    with ledger.transaction() as conn:
        conn.executemany(
            "INSERT OR REPLACE INTO cost_models(name, model, updated_at) VALUES (?,?,?)",
            [(name, text, now) for name, text in memory.items()],
        )
