"""The ledger's batches and images: the queue, per-image per-phase state, runs, control.

`Ledger` is the one object the rest of imgtrain holds. It owns the database
(`daemon.ledger.db`) and reaches the other tables through small APIs it is
composed of: `claims` (the inbox's side), `errors`, the face, cluster and
people tables, and the CLIP models and re-indexes (`clip_models`, `reindexes`).
Batch ids come from AUTOINCREMENT and are never reused, even after `queue
cleanup`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from daemon.errors import InvalidState, NotFound
from daemon.ledger.claims import Claims
from daemon.ledger.clipmodels import ClipModels
from daemon.ledger.clusters import Clusters
from daemon.ledger.db import Database
from daemon.ledger.errorlog import ErrorLog
from daemon.ledger.faces import Faces
from daemon.ledger.people import People
from daemon.ledger.photos import Photos
from daemon.ledger.reindexes import Reindexes
from daemon.ledger.rows import batch_from_row
from daemon.vocab import (
    BATCH_PHASES,
    PHASES,
    Batch,
    BatchState,
    ImageOutcome,
    PendingImage,
    PhaseState,
)


class Ledger:
    """Batches and images; the other tables through `claims` and friends."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path)
        self.path = self.db.path
        self.errors = ErrorLog(self.db)
        self.claims = Claims(self.db, self.errors)
        self.faces = Faces(self.db)
        self.clusters = Clusters(self.db)
        self.people = People(self.db)
        self.clip_models = ClipModels(self.db)
        self.reindexes = Reindexes(self.db)
        self.photos = Photos(self.db)

    # -- the database, for the package's other table APIs -------------------
    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self.db.transaction() as conn:
            yield conn

    def close(self) -> None:
        self.db.close()

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    # -- reading batches ---------------------------------------------------
    def batch(self, batch_id: int) -> Batch:
        row = self.conn.execute("SELECT * FROM batches WHERE batch_id=?", (batch_id,)).fetchone()
        if row is None:
            raise NotFound(f"there is no batch {batch_id}")
        return batch_from_row(row)

    def batches(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[Batch]:
        sql, params = "SELECT * FROM batches", []
        if states is not None:
            states = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params += states
        sql += " ORDER BY batch_id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [batch_from_row(r) for r in self.query(sql, params)]

    def next_batch(self) -> Batch | None:
        """A batch interrupted by a crash first, then the oldest waiting one."""
        row = self.conn.execute(
            "SELECT * FROM batches WHERE state IN ('running', 'waiting')"
            " ORDER BY state='running' DESC, batch_id LIMIT 1"
        ).fetchone()
        return None if row is None else batch_from_row(row)

    def queue_counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in BatchState}
        for row in self.query("SELECT state, COUNT(*) n FROM batches GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    # -- control (pause / cancel), shared with the CLI ----------------------
    def set_paused(self, paused: bool) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO control(key, value) VALUES ('paused', ?)",
                ("1" if paused else "0",),
            )

    def is_paused(self) -> bool:
        row = self.conn.execute("SELECT value FROM control WHERE key='paused'").fetchone()
        return row is not None and row["value"] == "1"

    def request_cancel(self, batch_id: int) -> BatchState:
        with self.transaction() as conn:
            batch = self.batch(batch_id)
            if batch.state == BatchState.WAITING:
                conn.execute(
                    "UPDATE batches SET state=?, finished_at=?, error_code='CANCELLED',"
                    " error_message='cancelled before it started' WHERE batch_id=?",
                    (BatchState.CANCELLED, time.time(), batch_id),
                )
                return BatchState.CANCELLED
            if batch.state != BatchState.RUNNING:
                raise InvalidState(
                    f"batch {batch_id} is {batch.state}; only waiting or running batches can be"
                    " cancelled",
                    hint="See `imgtrain queue` for each batch's state.",
                )
            conn.execute("UPDATE batches SET cancel_requested=1 WHERE batch_id=?", (batch_id,))
            return BatchState.RUNNING

    def cancel_requested(self, batch_id: int) -> bool:
        row = self.conn.execute(
            "SELECT cancel_requested FROM batches WHERE batch_id=?", (batch_id,)
        ).fetchone()
        return bool(row and row["cancel_requested"])

    # -- cost memory ---------------------------------------------------------
    def phase_costs(self) -> dict[str, float]:
        """Seconds per step as versions before the cost model remembered them (read only:
        they seed its priors; the model itself is in `daemon.ledger.workload`)."""
        return {
            r["phase"]: r["seconds_per_step"]
            for r in self.query("SELECT phase, seconds_per_step FROM phase_costs")
        }

    # -- runs: a run starts when work arrives while idle, ends when the queue empties
    def open_run(self) -> int:
        """The open run (created if none), with every unassigned queued batch joined to it."""
        with self.transaction() as conn:
            row = conn.execute("SELECT run_id FROM runs WHERE ended_at IS NULL").fetchone()
            if row is None:
                run_id = int(
                    conn.execute(
                        "INSERT INTO runs(started_at) VALUES (?)", (time.time(),)
                    ).lastrowid
                )
            else:
                run_id = int(row["run_id"])
            conn.execute(
                "UPDATE batches SET run_id=? WHERE run_id IS NULL"
                " AND state IN ('waiting','running')",
                (run_id,),
            )
            return run_id

    def current_run(self) -> int | None:
        row = self.conn.execute("SELECT run_id FROM runs WHERE ended_at IS NULL").fetchone()
        return None if row is None else int(row["run_id"])

    def end_run(self, run_id: int) -> None:
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET ended_at=? WHERE run_id=?", (time.time(), run_id))

    def run_batches(self, run_id: int) -> list[Batch]:
        return [
            batch_from_row(r)
            for r in self.query("SELECT * FROM batches WHERE run_id=? ORDER BY batch_id", (run_id,))
        ]

    def step_counts(self, batch_ids: list[int]) -> dict[int, dict[str, list[int]]]:
        """{batch_id: {phase: [done, total]}}: images for image phases, sub-steps for batch phases.

        Duplicates and disabled phases are not steps. A failed per-file step is
        done: the work for it is over.
        """
        out: dict[int, dict[str, list[int]]] = {b: {p: [0, 0] for p in PHASES} for b in batch_ids}
        if not batch_ids:
            return out
        marks = ",".join("?" * len(batch_ids))
        for row in self.query(
            "SELECT i.batch_id, p.phase, SUM(p.state != 'pending') done, COUNT(*) total"
            " FROM image_phases p JOIN images i USING(image_id)"
            f" WHERE i.batch_id IN ({marks}) AND p.state != 'skipped' GROUP BY i.batch_id, p.phase",
            batch_ids,
        ):
            out[row["batch_id"]][row["phase"]] = [int(row["done"]), int(row["total"])]
        batch_phases = ",".join("?" * len(BATCH_PHASES))
        for row in self.query(
            "SELECT batch_id, phase, step, total_steps FROM batch_phases"
            f" WHERE phase IN ({batch_phases}) AND batch_id IN ({marks})",
            [*BATCH_PHASES, *batch_ids],
        ):
            out[row["batch_id"]][row["phase"]] = [int(row["step"]), int(row["total_steps"])]
        return out

    # -- running a batch ----------------------------------------------------
    def start_batch(self, batch_id: int) -> Batch:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE batches SET state=?, started_at=COALESCE(started_at, ?),"
                " attempts=attempts+1 WHERE batch_id=?",
                (BatchState.RUNNING, time.time(), batch_id),
            )
        return self.batch(batch_id)

    def pending_images(self, batch_id: int) -> list[PendingImage]:
        """Images with any image phase still pending, in order, each with those phases."""
        return [
            PendingImage(
                image_id=r["image_id"],
                rel_path=r["rel_path"],
                sha256=r["sha256"],
                format=r["format"],
                phases=frozenset(r["phases"].split(",")),
            )
            for r in self.query(
                "SELECT i.image_id, i.rel_path, i.sha256, i.format,"
                " GROUP_CONCAT(p.phase) AS phases FROM images i JOIN image_phases p"
                " USING(image_id) WHERE i.batch_id=? AND p.state='pending'"
                " GROUP BY i.image_id ORDER BY i.image_id",
                (batch_id,),
            )
        ]

    def record_outcomes(
        self,
        batch_id: int,
        phase: str,
        outcomes: Iterable[ImageOutcome],
        *,
        log_errors: bool = True,
    ) -> None:
        """Store each image's outcome for `phase` (one transaction for the lot)."""
        now = time.time()
        with self.transaction() as conn:
            for o in outcomes:
                conn.execute(
                    "UPDATE image_phases SET state=?, error_code=?, message=?, detail=?,"
                    " updated_at=?"
                    " WHERE image_id=? AND phase=?",
                    (
                        o.state,
                        o.error_code,
                        o.message,
                        json.dumps(o.detail) if o.detail else None,
                        now,
                        o.image_id,
                        phase,
                    ),
                )
                if o.error_code and log_errors:
                    rel = conn.execute(
                        "SELECT rel_path FROM images WHERE image_id=?", (o.image_id,)
                    ).fetchone()
                    self.errors.add(
                        rel and rel["rel_path"],
                        o.error_code,
                        o.message,
                        batch_id=batch_id,
                        image_id=o.image_id,
                        at=now,
                    )

    def set_batch_phase(
        self,
        batch_id: int,
        phase: str,
        state: PhaseState,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        add_seconds: float = 0.0,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE batch_phases SET state=?, step=COALESCE(?, step),"
                " total_steps=COALESCE(?, total_steps), seconds=seconds+?"
                " WHERE batch_id=? AND phase=?",
                (state, step, total_steps, add_seconds, batch_id, phase),
            )

    def batch_phases(self, batch_id: int) -> dict[str, sqlite3.Row]:
        return {
            r["phase"]: r
            for r in self.query("SELECT * FROM batch_phases WHERE batch_id=?", (batch_id,))
        }

    def add_batch_seconds(self, batch_id: int, seconds: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE batches SET seconds=seconds+? WHERE batch_id=?", (seconds, batch_id)
            )

    def finish_batch(
        self,
        batch_id: int,
        state: BatchState,
        *,
        seconds: float = 0.0,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE batches SET state=?, finished_at=?, seconds=seconds+?, error_code=?,"
                " error_message=?, cancel_requested=0 WHERE batch_id=?",
                (state, time.time(), seconds, error_code, error_message, batch_id),
            )
            if error_code:
                self.errors.add(None, error_code, error_message or error_code, batch_id=batch_id)
