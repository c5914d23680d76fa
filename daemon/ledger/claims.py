"""The inbox's side of the ledger: reserving a batch id, recording a claimed folder.

Reached as `ledger.claims`; the claim protocol itself is `daemon.ingest.claim`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from daemon.ledger.db import Database
from daemon.ledger.errorlog import ErrorLog
from daemon.ledger.rows import batch_from_row
from daemon.vocab import (
    PHASES,
    Batch,
    BatchState,
    FileEntry,
    ImageState,
    PhaseState,
    SkippedFile,
    is_batch_phase,
)


class Claims:
    """Reserve, record, fail and list the batches being claimed."""

    def __init__(self, db: Database, errors: ErrorLog) -> None:
        self.db = db
        self.errors = errors

    def reserve_batch(self, name: str, kind: str, sources: list[str]) -> int:
        """Reserve a batch id before anything moves, so a crash mid-claim is recoverable."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO batches(name, kind, sources, state, created_at) VALUES (?,?,?,?,?)",
                (name, kind, json.dumps(sources), BatchState.CLAIMING, time.time()),
            )
            return int(cur.lastrowid)

    def set_batch_path(self, batch_id: int, path: Path | str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE batches SET path=? WHERE batch_id=?", (str(path), batch_id))

    def finish_claim(
        self, batch_id: int, files: list[FileEntry], skipped: list[SkippedFile], phases: list[str]
    ) -> None:
        """Record the batch's images and make it runnable, in one transaction.

        An image whose content is already in the library (same SHA-256, not
        failed) is recorded as a duplicate and skipped by every phase.
        """
        now = time.time()
        with self.db.transaction() as conn:
            state = conn.execute(
                "SELECT state FROM batches WHERE batch_id=?", (batch_id,)
            ).fetchone()
            if state is None or state["state"] != BatchState.CLAIMING:
                return  # already finished by an earlier attempt
            conn.execute("DELETE FROM images WHERE batch_id=?", (batch_id,))
            seen: dict[str, int] = {}
            for entry in files:
                dup = seen.get(entry.sha256) or self._library_copy(conn, entry.sha256)
                cur = conn.execute(
                    "INSERT INTO images(batch_id, rel_path, sha256, size, format, duplicate_of)"
                    " VALUES (?,?,?,?,?,?)",
                    (batch_id, entry.rel_path, entry.sha256, entry.size, entry.format, dup),
                )
                image_id = int(cur.lastrowid)
                seen.setdefault(entry.sha256, image_id)
                for phase in phases:
                    if is_batch_phase(phase):
                        continue
                    conn.execute(
                        "INSERT INTO image_phases(image_id, phase, state, message, updated_at)"
                        " VALUES (?,?,?,?,?)",
                        (
                            image_id,
                            phase,
                            ImageState.SKIPPED if dup else ImageState.PENDING,
                            f"duplicate of image {dup}" if dup else None,
                            now,
                        ),
                    )
            for skip in skipped:
                self.errors.add(skip.rel_path, skip.code, skip.message, batch_id=batch_id, at=now)
            for phase in PHASES:
                conn.execute(
                    "INSERT OR REPLACE INTO batch_phases(batch_id, phase, state) VALUES (?,?,?)",
                    (
                        batch_id,
                        phase,
                        PhaseState.PENDING if phase in phases else PhaseState.SKIPPED,
                    ),
                )
            conn.execute(
                "UPDATE batches SET state=?, queued_at=? WHERE batch_id=?",
                (BatchState.WAITING, now, batch_id),
            )

    @staticmethod
    def _library_copy(conn: sqlite3.Connection, sha256: str) -> int | None:
        row = conn.execute(
            "SELECT i.image_id FROM images i JOIN batches b USING(batch_id)"
            " WHERE i.sha256=? AND i.duplicate_of IS NULL AND b.state != 'claiming'"
            " AND NOT EXISTS (SELECT 1 FROM image_phases p WHERE p.image_id=i.image_id"
            "                 AND p.state='failed')"
            " ORDER BY i.image_id LIMIT 1",
            (sha256,),
        ).fetchone()
        return None if row is None else int(row["image_id"])

    def fail_claim(self, batch_id: int, code: str, message: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE batches SET state=?, error_code=?, error_message=?, finished_at=?"
                " WHERE batch_id=?",
                (BatchState.FAILED, code, message, time.time(), batch_id),
            )

    def claiming_batches(self) -> list[Batch]:
        rows = self.db.query(
            "SELECT * FROM batches WHERE state=? ORDER BY batch_id", (BatchState.CLAIMING,)
        )
        return [batch_from_row(r) for r in rows]
