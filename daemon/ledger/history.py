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
    images_per_second: float | None
    finished_at: datetime | None
    error: str | None


# How a batch's images and faces are counted, for the status file's last batch and
# for `imgtrain queue` alike (a select list over `batches b`). A failed per-file
# step makes an image failed; an image is processed once no phase is left for it.
BATCH_COUNTS_SQL = (
    " (SELECT COUNT(*) FROM images i WHERE i.batch_id=b.batch_id) n_images,"
    " (SELECT COUNT(*) FROM images i WHERE i.batch_id=b.batch_id"
    "   AND i.duplicate_of IS NOT NULL) n_dups,"
    " (SELECT COUNT(*) FROM images i WHERE i.batch_id=b.batch_id AND EXISTS("
    "   SELECT 1 FROM image_phases p WHERE p.image_id=i.image_id AND p.state='failed'))"
    "   n_failed,"
    " (SELECT COUNT(*) FROM images i WHERE i.batch_id=b.batch_id"
    "   AND i.duplicate_of IS NULL AND NOT EXISTS(SELECT 1 FROM image_phases p"
    "   WHERE p.image_id=i.image_id AND p.state IN ('pending','failed'))) n_processed,"
    " (SELECT COUNT(*) FROM faces f WHERE f.batch_id=b.batch_id) n_faces"
)


def batch_summary(ledger: Ledger, batch_id: int) -> BatchSummary:
    batch = ledger.batch(batch_id)
    row = ledger.query(f"SELECT {BATCH_COUNTS_SQL} FROM batches b WHERE b.batch_id=?", (batch_id,))[
        0
    ]
    error = f"{batch.error_code}: {batch.error_message}" if batch.error_code else None
    seconds, processed = round(batch.seconds, 3), int(row["n_processed"])
    return BatchSummary(
        batch_id=batch.batch_id,
        name=batch.name,
        state=str(batch.state),
        images=int(row["n_images"]),
        processed=processed,
        duplicates=int(row["n_dups"]),
        failed_images=int(row["n_failed"]),
        faces=int(row["n_faces"]),
        seconds=seconds,
        images_per_second=round(processed / seconds, 3) if seconds > 0 and processed else None,
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


def inbox_refusals(ledger: Ledger, codes: list[str]) -> list[ErrorRow]:
    """Inbox entries whose latest notice has one of `codes`, oldest first.

    Notices about an inbox entry carry no batch; the latest one per entry is
    what holds for it now (a later claim or another notice replaces it).
    """
    marks = ",".join("?" * len(codes))
    rows = ledger.query(
        "SELECT e.at, e.code, e.message, e.file, e.batch_id FROM errors e JOIN"
        " (SELECT MAX(error_id) id FROM errors WHERE batch_id IS NULL AND file IS NOT NULL"
        "  GROUP BY file) latest ON e.error_id = latest.id"
        f" WHERE e.code IN ({marks}) ORDER BY e.error_id",
        codes,
    )
    return [
        ErrorRow(datetime.fromtimestamp(r["at"], UTC), r["code"], r["message"], r["file"], None)
        for r in rows
    ]


def totals(ledger: Ledger) -> dict[str, int]:
    row = ledger.query(
        "SELECT (SELECT COUNT(*) FROM batches"
        "   WHERE state NOT IN ('claiming', 'removing', 'removed')) batches,"
        " (SELECT COUNT(DISTINCT i.sha256) FROM images i JOIN image_phases p USING(image_id)"
        "   WHERE p.phase='embedding' AND p.state='done') images,"
        " (SELECT COUNT(*) FROM faces) faces,"
        " (SELECT COUNT(*) FROM clusters WHERE size > 0) clusters,"
        " (SELECT COUNT(*) FROM people) people"
    )[0]
    return {k: int(row[k] or 0) for k in ("batches", "images", "faces", "clusters", "people")}
