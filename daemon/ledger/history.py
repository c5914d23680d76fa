"""Read-only summaries of the ledger: batch outcomes, recent errors, totals.

The status file and the CLI read these; nothing here writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from daemon.ledger.errorlog import ErrorRow
from daemon.ledger.ledger import Ledger


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class BatchSummary:
    batch_id: int
    name: str
    state: str
    images: int
    processed: int
    duplicates: int
    failed_images: int
    faces: int
    seconds: float
    finished_at: datetime | None
    error: str | None

    @property
    def images_per_second(self) -> float | None:
        return (
            round(self.processed / self.seconds, 3) if self.seconds > 0 and self.processed else None
        )


def batch_summary(ledger: Ledger, batch_id: int) -> BatchSummary:
    batch = ledger.batch(batch_id)
    row = ledger.query(
        "SELECT COUNT(*) images, SUM(duplicate_of IS NOT NULL) duplicates,"
        " SUM(EXISTS(SELECT 1 FROM image_phases p WHERE p.image_id=i.image_id"
        "            AND p.state='failed')) failed,"
        " SUM(duplicate_of IS NULL AND NOT EXISTS(SELECT 1 FROM image_phases p"
        "     WHERE p.image_id=i.image_id AND p.state IN ('pending','failed'))) processed"
        " FROM images i WHERE batch_id=?",
        (batch_id,),
    )[0]
    faces = ledger.query("SELECT COUNT(*) n FROM faces WHERE batch_id=?", (batch_id,))[0]["n"]
    error = f"{batch.error_code}: {batch.error_message}" if batch.error_code else None
    return BatchSummary(
        batch_id=batch.batch_id,
        name=batch.name,
        state=str(batch.state),
        images=int(row["images"] or 0),
        processed=int(row["processed"] or 0),
        duplicates=int(row["duplicates"] or 0),
        failed_images=int(row["failed"] or 0),
        faces=int(faces),
        seconds=round(batch.seconds, 3),
        finished_at=_ts(batch.finished_at),
        error=error,
    )


def last_finished_batch(ledger: Ledger) -> int | None:
    row = ledger.query(
        "SELECT batch_id FROM batches WHERE state IN ('completed','failed','cancelled')"
        " ORDER BY finished_at DESC, batch_id DESC LIMIT 1"
    )
    return int(row[0]["batch_id"]) if row else None


def recent_errors(ledger: Ledger, limit: int = 50) -> list[ErrorRow]:
    return ledger.errors.recent(limit)


def totals(ledger: Ledger) -> dict[str, int]:
    row = ledger.query(
        "SELECT (SELECT COUNT(*) FROM batches WHERE state != 'claiming') batches,"
        " (SELECT COUNT(DISTINCT i.sha256) FROM images i JOIN image_phases p USING(image_id)"
        "   WHERE p.phase='embedding' AND p.state='done') images,"
        " (SELECT COUNT(*) FROM faces) faces,"
        " (SELECT COUNT(*) FROM clusters WHERE size > 0) clusters,"
        " (SELECT COUNT(*) FROM people) people"
    )[0]
    return {k: int(row[k] or 0) for k in ("batches", "images", "faces", "clusters", "people")}
