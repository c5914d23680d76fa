"""The errors table: what went wrong with a file, an image or a batch, newest last.

Reached as `ledger.errors`. Batches log their image and batch failures here,
the inbox its notices (a file it skipped, a folder it could not claim); the
status file and `imgtrain status` show the most recent ones. `queue cleanup`
(daemon.ledger.admin) drops old rows together with their batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.ledger.db import Database


@dataclass(frozen=True)
class ErrorRow:
    at: datetime
    code: str
    message: str
    file: str | None
    batch_id: int | None


class ErrorLog:
    """Add to and read the errors table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        file: str | None,
        code: str,
        message: str,
        *,
        batch_id: int | None = None,
        image_id: int | None = None,
        at: float | None = None,
    ) -> None:
        """One error row; joins the caller's transaction when there is one."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO errors(at, batch_id, image_id, file, code, message)"
                " VALUES (?,?,?,?,?,?)",
                (time.time() if at is None else at, batch_id, image_id, file, code, message),
            )

    def recent(self, limit: int = 50) -> list[ErrorRow]:
        """The newest `limit` errors, newest first."""
        rows = self.db.query(
            "SELECT at, code, message, file, batch_id FROM errors ORDER BY error_id DESC LIMIT ?",
            (limit,),
        )
        return [
            ErrorRow(
                at=datetime.fromtimestamp(r["at"], UTC),
                code=r["code"],
                message=r["message"],
                file=r["file"],
                batch_id=r["batch_id"],
            )
            for r in rows
        ]
