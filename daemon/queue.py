"""The SQLite ledger: batches, their images, per-image per-phase state, errors.

The daemon and the CLI open the same file (WAL mode, so readers never block
the writer). Every state change is one transaction. Batch ids come from
AUTOINCREMENT and are never reused, even after `queue cleanup`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import DiskFull, InvalidState, NotFound
from daemon.queue_claims import ClaimsMixin, FileEntry, SkippedFile
from daemon.schema import SCHEMA, SCHEMA_VERSION
from daemon.states import BatchState, PhaseState

# Re-exported: callers import the ledger's vocabulary from here.
__all__ = ["Batch", "BatchState", "FileEntry", "Ledger", "PhaseState", "SkippedFile"]


@dataclass(frozen=True)
class Batch:
    batch_id: int
    name: str
    kind: str
    sources: list[str]
    path: str | None
    state: BatchState
    run_id: int | None
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float
    error_code: str | None
    error_message: str | None
    cancel_requested: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Batch:
        return cls(
            batch_id=row["batch_id"],
            name=row["name"],
            kind=row["kind"],
            sources=json.loads(row["sources"]),
            path=row["path"],
            state=BatchState(row["state"]),
            run_id=row["run_id"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            seconds=row["seconds"],
            error_code=row["error_code"],
            error_message=row["error_message"],
            cancel_requested=bool(row["cancel_requested"]),
        )


def _disk_full(exc: sqlite3.Error) -> bool:
    return getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(
        exc
    )


class Ledger(ClaimsMixin):
    """One connection per thread to the same SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        # executescript commits on its own, so the schema is not inside transaction().
        self.conn.executescript(SCHEMA)
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    # -- connections -------------------------------------------------------
    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a
            # writer takes the lock up front instead of failing mid-transaction.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        if conn.in_transaction:  # nested: join the outer transaction
            yield conn
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error) and _disk_full(exc):
                raise DiskFull(f"the ledger's disk is full ({self.path}): {exc}") from exc
            raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        return self.conn.execute(sql, tuple(params)).fetchall()

    # -- reading batches ---------------------------------------------------
    def batch(self, batch_id: int) -> Batch:
        row = self.conn.execute("SELECT * FROM batches WHERE batch_id=?", (batch_id,)).fetchone()
        if row is None:
            raise NotFound(f"there is no batch {batch_id}")
        return Batch.from_row(row)

    def batches(self, states: Iterable[str] | None = None, limit: int | None = None) -> list[Batch]:
        sql, params = "SELECT * FROM batches", []
        if states is not None:
            states = list(states)
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params += states
        sql += " ORDER BY batch_id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [Batch.from_row(r) for r in self.query(sql, params)]

    def next_batch(self) -> Batch | None:
        """A batch interrupted by a crash first, then the oldest waiting one."""
        row = self.conn.execute(
            "SELECT * FROM batches WHERE state IN ('running', 'waiting')"
            " ORDER BY state='running' DESC, batch_id LIMIT 1"
        ).fetchone()
        return None if row is None else Batch.from_row(row)

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
        return {
            r["phase"]: r["seconds_per_step"]
            for r in self.query("SELECT phase, seconds_per_step FROM phase_costs")
        }

    def save_phase_cost(self, phase: str, seconds_per_step: float, samples: int) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO phase_costs(phase, seconds_per_step, samples)"
                " VALUES (?,?,?)",
                (phase, seconds_per_step, samples),
            )

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
            Batch.from_row(r)
            for r in self.query("SELECT * FROM batches WHERE run_id=? ORDER BY batch_id", (run_id,))
        ]

    def step_counts(self, batch_ids: list[int]) -> dict[int, dict[str, list[int]]]:
        """{batch_id: {phase: [done, total]}} for image phases, and clustering's sub-steps.

        Duplicates and disabled phases are not steps. A failed per-file step is
        done: the work for it is over.
        """
        out: dict[int, dict[str, list[int]]] = {
            b: {"embedding": [0, 0], "faces": [0, 0], "clustering": [0, 0]} for b in batch_ids
        }
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
        for row in self.query(
            f"SELECT batch_id, step, total_steps FROM batch_phases WHERE phase='clustering'"
            f" AND batch_id IN ({marks})",
            batch_ids,
        ):
            out[row["batch_id"]]["clustering"] = [int(row["step"]), int(row["total_steps"])]
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

    def pending_images(self, batch_id: int) -> list[sqlite3.Row]:
        """Images with any image phase still pending, in order; `phases` is a CSV of them."""
        return self.query(
            "SELECT i.image_id, i.rel_path, i.sha256, i.format,"
            " GROUP_CONCAT(p.phase) AS phases FROM images i JOIN image_phases p USING(image_id)"
            " WHERE i.batch_id=? AND p.state='pending' GROUP BY i.image_id ORDER BY i.image_id",
            (batch_id,),
        )

    def record_outcomes(
        self, batch_id: int, phase: str, outcomes: Iterable[Any], *, log_errors: bool = True
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
                    conn.execute(
                        "INSERT INTO errors(at, batch_id, image_id, file, code, message)"
                        " VALUES (?,?,?,?,?,?)",
                        (
                            now,
                            batch_id,
                            o.image_id,
                            rel and rel["rel_path"],
                            o.error_code,
                            o.message,
                        ),
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
                conn.execute(
                    "INSERT INTO errors(at, batch_id, code, message) VALUES (?,?,?,?)",
                    (time.time(), batch_id, error_code, error_message or error_code),
                )
