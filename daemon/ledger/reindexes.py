"""The reindexes table: `imgtrain reindex` jobs, and the library images a re-index scans.

Reached as `ledger.reindexes`. At most one job is `running`. The daemon scans
the library in image id order and records, after each chunk it stored, the id
it got to (`cursor`) with the counts: a restarted daemon goes on from there,
and the store tells which images of the chunk in flight are already in the
new collection, so no finished image is embedded twice. Every write joins the
caller's transaction when there is one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.ledger.db import Database
from daemon.vocab import BatchState, ReindexState

# Batches whose images are on their way out of the library.
_GONE = (BatchState.REMOVING, BatchState.REMOVED, BatchState.CLAIMING)
_LIBRARY = (
    " FROM images i JOIN batches b USING(batch_id) JOIN image_phases p"
    " ON p.image_id = i.image_id AND p.phase = 'embedding' AND p.state = 'done'"
    f" WHERE b.state NOT IN ({','.join('?' * len(_GONE))})"
)


@dataclass(frozen=True)
class ReindexRow:
    reindex_id: int
    model: str
    from_model: str | None
    state: ReindexState
    drop_old: bool
    cursor: int
    done: int
    total: int
    embedded: int
    unreadable: int
    seconds: float
    requested_at: float
    started_at: float | None
    finished_at: float | None
    message: str | None


@dataclass(frozen=True)
class LibraryImage:
    """An image whose vector the library has: what a re-index embeds again."""

    image_id: int
    sha256: str
    batch_id: int
    path: Path  # the photo in its batch folder


def _row(r: Any) -> ReindexRow:
    return ReindexRow(
        r["reindex_id"],
        r["model"],
        r["from_model"],
        ReindexState(r["state"]),
        bool(r["drop_old"]),
        r["cursor"],
        r["done"],
        r["total"],
        r["embedded"],
        r["unreadable"],
        r["seconds"],
        r["requested_at"],
        r["started_at"],
        r["finished_at"],
        r["message"],
    )


class Reindexes:
    """Ask for, advance and finish re-index jobs; list the library they scan."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- jobs --------------------------------------------------------------------
    def get(self, reindex_id: int) -> ReindexRow | None:
        rows = self.db.query("SELECT * FROM reindexes WHERE reindex_id=?", (reindex_id,))
        return _row(rows[0]) if rows else None

    def open(self) -> ReindexRow | None:
        """The running job, if any."""
        rows = self.db.query(
            "SELECT * FROM reindexes WHERE state=? ORDER BY reindex_id DESC LIMIT 1",
            (ReindexState.RUNNING,),
        )
        return _row(rows[0]) if rows else None

    def last(self) -> ReindexRow | None:
        rows = self.db.query("SELECT * FROM reindexes ORDER BY reindex_id DESC LIMIT 1")
        return _row(rows[0]) if rows else None

    def create(self, model: str, from_model: str | None, *, drop_old: bool) -> ReindexRow:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO reindexes(model, from_model, state, drop_old, requested_at)"
                " VALUES (?,?,?,?,?)",
                (model, from_model, ReindexState.RUNNING, int(drop_old), time.time()),
            )
            row = self.get(int(cur.lastrowid))
        assert row is not None
        return row

    def set_drop_old(self, reindex_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE reindexes SET drop_old=1 WHERE reindex_id=?", (reindex_id,))

    def advance(
        self,
        reindex_id: int,
        *,
        cursor: int | None = None,
        done: int | None = None,
        total: int | None = None,
        embedded: int = 0,
        unreadable: int = 0,
        seconds: float = 0.0,
    ) -> None:
        """Record progress: after the chunk's vectors are in the store, never before.
        Counts alone (done, total) do not mark the job started."""
        working = cursor is not None or embedded or unreadable
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE reindexes SET cursor=MAX(cursor, COALESCE(?, cursor)),"
                " done=COALESCE(?, done), total=COALESCE(?, total), embedded=embedded+?,"
                " unreadable=unreadable+?, seconds=seconds+?,"
                " started_at=COALESCE(started_at, ?) WHERE reindex_id=?",
                (
                    *(cursor, done, total, embedded, unreadable, seconds),
                    time.time() if working else None,
                    reindex_id,
                ),
            )

    def finish(self, reindex_id: int, state: ReindexState, message: str | None = None) -> bool:
        """End a running job; False if it had already ended (cancelled meanwhile)."""
        with self.db.transaction() as conn:
            cur = conn.execute(
                "UPDATE reindexes SET state=?, finished_at=?, message=COALESCE(?, message)"
                " WHERE reindex_id=? AND state=?",
                (state, time.time(), message, reindex_id, ReindexState.RUNNING),
            )
            return cur.rowcount == 1

    # -- the library it scans ------------------------------------------------------
    def library_images(self, after: int, limit: int) -> list[LibraryImage]:
        """Images with a vector (embedding done) and an id above `after`, by id."""
        return [
            LibraryImage(r["image_id"], r["sha256"], r["batch_id"], Path(r["path"]) / r["rel_path"])
            for r in self.db.query(
                "SELECT i.image_id, i.sha256, i.batch_id, i.rel_path, b.path"
                f"{_LIBRARY} AND i.image_id > ? ORDER BY i.image_id LIMIT ?",
                (*_GONE, after, limit),
            )
        ]

    def held(self, shas: list[str]) -> set[str]:
        """The photos among `shas` the library still holds (none taken out meanwhile)."""
        rows = self.db.query(
            "SELECT DISTINCT i.sha256 FROM json_each(?) j JOIN images i ON i.sha256 = j.value"
            f" JOIN batches b USING(batch_id) WHERE b.state NOT IN ({','.join('?' * len(_GONE))})",
            (json.dumps(shas), *_GONE),
        )
        return {r["sha256"] for r in rows}

    def library_size(self) -> int:
        """Distinct photos with a vector: what a complete collection holds."""
        return int(self.db.query(f"SELECT COUNT(DISTINCT i.sha256) n{_LIBRARY}", _GONE)[0]["n"])
