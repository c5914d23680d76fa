"""Steering the queue from the command line: listing, retry, statistics, cleanup.

These are ledger operations the CLI runs while the daemon may be running; each
change is one transaction, and the daemon picks it up at its next check.
Nothing here touches photos on disk or vectors in ChromaDB (`queue remove` does:
daemon.people.removal).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from daemon.errors import InvalidState
from daemon.ledger import history
from daemon.ledger.ledger import Ledger
from daemon.ledger.removal import RemovalRow, removals
from daemon.vocab import BatchState, PhaseState

FINISHED = (BatchState.COMPLETED, BatchState.FAILED, BatchState.CANCELLED)
RETRYABLE = (BatchState.FAILED, BatchState.CANCELLED)


@dataclass(frozen=True)
class BatchRow:
    """One line of `imgtrain queue`."""

    batch_id: int
    name: str
    state: str
    path: str | None
    images: int
    processed: int
    duplicates: int
    failed_images: int
    faces: int
    errors: int
    attempts: int
    seconds: float
    steps_done: int
    steps_total: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    removed: RemovalRow | None = None  # what went, for a batch `imgtrain queue remove` took out


def list_batches(
    ledger: Ledger, states: Iterable[str] | None = None, limit: int | None = None
) -> list[BatchRow]:
    """Batches oldest first; with `limit`, the newest `limit` of them."""
    where, params = "", []
    if states is not None:
        states = list(states)
        where = f" WHERE b.state IN ({','.join('?' * len(states))})"
        params += states
    rows = ledger.query(
        f"SELECT b.*, {history.BATCH_COUNTS_SQL},"
        " (SELECT COUNT(*) FROM errors e WHERE e.batch_id=b.batch_id) n_errors"
        f" FROM batches b{where} ORDER BY b.batch_id DESC"
        + (f" LIMIT {int(limit)}" if limit else ""),
        params,
    )
    rows = list(reversed(rows))
    steps = ledger.step_counts([r["batch_id"] for r in rows])
    gone = removals(ledger, [r["batch_id"] for r in rows if r["state"] == BatchState.REMOVED])
    out = []
    for r in rows:
        per_phase = steps[r["batch_id"]].values()
        error = f"{r['error_code']}: {r['error_message']}" if r["error_code"] else None
        out.append(
            BatchRow(
                batch_id=r["batch_id"],
                name=r["name"],
                state=r["state"],
                path=r["path"],
                images=r["n_images"],
                processed=r["n_processed"],
                duplicates=r["n_dups"],
                failed_images=r["n_failed"],
                faces=r["n_faces"],
                errors=r["n_errors"],
                attempts=r["attempts"],
                seconds=round(r["seconds"], 3),
                steps_done=sum(d for d, _ in per_phase),
                steps_total=sum(t for _, t in per_phase),
                created_at=r["created_at"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                error=error,
                removed=gone.get(r["batch_id"]),
            )
        )
    return out


# -- retry ---------------------------------------------------------------------
@dataclass(frozen=True)
class RetryResult:
    batch_id: int
    name: str
    previous_state: str
    attempts: int
    max_retries: int
    images_reset: int  # per-image failures given another try
    images_pending: int  # images the daemon will process on this attempt


def retry_batch(ledger: Ledger, batch_id: int, max_retries: int) -> RetryResult:
    """Queue a failed or cancelled batch again; only its unfinished images are redone.

    Images done stay done (their vectors are in the store, keyed by content
    hash, so even a redo would upsert, never duplicate); images that failed get
    another try; the batch goes back to `waiting` (the daemon takes waiting
    batches lowest id first). `attempts` counts the times the daemon started
    the batch (a restart after a crash counts too); a batch started more than
    `max_retries` times is refused: the first run plus `max_retries` retries.
    """
    with ledger.transaction() as conn:
        batch = ledger.batch(batch_id)
        if batch.state not in RETRYABLE:
            raise InvalidState(
                f"batch {batch_id} is {batch.state}; only failed or cancelled batches can be"
                " retried",
                hint="See each batch's state with `imgtrain queue`.",
            )
        if batch.attempts > max_retries:
            raise InvalidState(
                f"batch {batch_id} was tried {batch.attempts} times"
                f" (queue.max_retries is {max_retries})",
                hint="Fix the cause shown by `imgtrain queue` (the batch's error), then raise"
                " queue.max_retries in config.yaml or drop the folder into the inbox again.",
            )
        images = conn.execute(
            "SELECT COUNT(*) n FROM images WHERE batch_id=?", (batch_id,)
        ).fetchone()["n"]
        if images == 0:
            raise InvalidState(
                f"batch {batch_id} has no images recorded"
                f" ({batch.error_code}: {batch.error_message}); there is nothing to re-run",
                hint="Drop the folder into the inbox again once it holds photos.",
            )
        in_batch = "image_id IN (SELECT image_id FROM images WHERE batch_id=?)"
        reset = conn.execute(
            f"SELECT COUNT(DISTINCT image_id) n FROM image_phases WHERE state='failed'"
            f" AND {in_batch}",
            (batch_id,),
        ).fetchone()["n"]
        conn.execute(
            "UPDATE image_phases SET state=?, error_code=NULL, message=NULL, detail=NULL,"
            f" updated_at=? WHERE state=? AND {in_batch}",
            (PhaseState.PENDING, time.time(), PhaseState.FAILED, batch_id),
        )
        pending = conn.execute(
            f"SELECT COUNT(DISTINCT image_id) n FROM image_phases WHERE state='pending'"
            f" AND {in_batch}",
            (batch_id,),
        ).fetchone()["n"]
        # Every enabled phase runs again: image phases finish at once where
        # nothing is pending, and clustering must see any faces the retry finds.
        conn.execute(
            "UPDATE batch_phases SET state=?, step=CASE WHEN phase='clustering' THEN 0"
            " ELSE step END WHERE batch_id=? AND state != ?",
            (PhaseState.PENDING, batch_id, PhaseState.SKIPPED),
        )
        # run_id NULL: the daemon's next run adopts the batch, so its
        # batch_number / batch_queue_size are counted in that run.
        conn.execute(
            "UPDATE batches SET state=?, cancel_requested=0, error_code=NULL,"
            " error_message=NULL, finished_at=NULL, run_id=NULL, queued_at=? WHERE batch_id=?",
            (BatchState.WAITING, time.time(), batch_id),
        )
    return RetryResult(
        batch_id=batch_id,
        name=batch.name,
        previous_state=str(batch.state),
        attempts=batch.attempts,
        max_retries=max_retries,
        images_reset=int(reset),
        images_pending=int(pending),
    )


# -- stats ---------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    batches: dict[str, int]
    finished: int
    success_rate: float | None  # completed / finished
    avg_seconds_per_batch: float | None  # completed batches
    avg_seconds_per_image: float | None  # completed batches' time / their processed images
    images: int
    faces: int
    clusters: int
    people: int
    duplicates: int
    failed_images: int
    errors: int


def stats(ledger: Ledger) -> Stats:
    counts = ledger.queue_counts()
    finished = sum(counts.get(s, 0) for s in FINISHED)
    row = ledger.query("SELECT COUNT(*) n, SUM(seconds) secs FROM batches WHERE state='completed'")[
        0
    ]
    processed = ledger.query(
        "SELECT COUNT(*) n FROM images i JOIN batches b USING(batch_id)"
        " WHERE b.state='completed' AND i.duplicate_of IS NULL AND NOT EXISTS("
        " SELECT 1 FROM image_phases p WHERE p.image_id=i.image_id"
        " AND p.state IN ('pending','failed'))"
    )[0]["n"]
    images = ledger.query(
        "SELECT SUM(duplicate_of IS NOT NULL) dups, SUM(EXISTS(SELECT 1 FROM image_phases p"
        " WHERE p.image_id=i.image_id AND p.state='failed')) failed FROM images i"
    )[0]
    errors = ledger.query("SELECT COUNT(*) n FROM errors")[0]["n"]
    totals = history.totals(ledger)
    n_done, secs = int(row["n"] or 0), float(row["secs"] or 0.0)
    return Stats(
        batches={**counts, "total": sum(counts.values())},
        finished=finished,
        success_rate=round(counts.get("completed", 0) / finished, 4) if finished else None,
        avg_seconds_per_batch=round(secs / n_done, 3) if n_done else None,
        avg_seconds_per_image=round(secs / processed, 4) if processed else None,
        images=totals["images"],
        faces=totals["faces"],
        clusters=totals["clusters"],
        people=totals["people"],
        duplicates=int(images["dups"] or 0),
        failed_images=int(images["failed"] or 0),
        errors=int(errors),
    )


# -- cleanup -------------------------------------------------------------------
@dataclass
class CleanupResult:
    days: float
    cutoff: float
    dry_run: bool
    batches: list[int] = field(default_factory=list)  # batch ids whose rows were removed
    kept_for_faces: list[int] = field(default_factory=list)  # old batches the faces need
    images: int = 0
    image_phases: int = 0
    batch_phases: int = 0
    errors: int = 0
    runs: int = 0


def cleanup(ledger: Ledger, days: float, *, dry_run: bool = False) -> CleanupResult:
    """Drop history rows of batches finished more than `days` ago, and older errors.

    Batches whose faces the faces/clusters/people tables still refer to keep
    their batch and image rows (a face needs its photo's path); only their
    old error rows go. Photos on disk and vectors in ChromaDB are never
    touched, and batch ids are never reused (sqlite_sequence stays).
    """
    cutoff = time.time() - days * 86400
    result = CleanupResult(days=days, cutoff=cutoff, dry_run=dry_run)
    conn = ledger.conn
    conn.execute("BEGIN IMMEDIATE")
    try:
        marks = ",".join("?" * len(FINISHED))
        old = [
            r["batch_id"]
            for r in conn.execute(
                f"SELECT batch_id FROM batches WHERE state IN ({marks})"
                " AND COALESCE(finished_at, created_at) < ? ORDER BY batch_id",
                (*FINISHED, cutoff),
            )
        ]
        with_faces = {
            r["batch_id"]
            for r in conn.execute(
                "SELECT DISTINCT batch_id FROM faces UNION"
                " SELECT DISTINCT i.batch_id FROM faces f JOIN images i USING(image_id)"
            )
        }
        result.kept_for_faces = [b for b in old if b in with_faces]
        result.batches = [b for b in old if b not in with_faces]
        for b in result.batches:
            result.image_phases += conn.execute(
                "DELETE FROM image_phases WHERE image_id IN"
                " (SELECT image_id FROM images WHERE batch_id=?)",
                (b,),
            ).rowcount
            result.images += conn.execute("DELETE FROM images WHERE batch_id=?", (b,)).rowcount
            result.batch_phases += conn.execute(
                "DELETE FROM batch_phases WHERE batch_id=?", (b,)
            ).rowcount
            result.errors += conn.execute("DELETE FROM errors WHERE batch_id=?", (b,)).rowcount
            conn.execute("DELETE FROM batches WHERE batch_id=?", (b,))
        # Old errors of kept batches and inbox notices (no batch); never those
        # of batches still waiting or running.
        result.errors += conn.execute(
            "DELETE FROM errors WHERE at < ? AND (batch_id IS NULL OR batch_id IN"
            f" (SELECT batch_id FROM batches WHERE state IN ({marks})))",
            (cutoff, *FINISHED),
        ).rowcount
        result.runs = conn.execute(
            "DELETE FROM runs WHERE ended_at IS NOT NULL AND ended_at < ?"
            " AND run_id NOT IN (SELECT run_id FROM batches WHERE run_id IS NOT NULL)",
            (cutoff,),
        ).rowcount
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("ROLLBACK" if dry_run else "COMMIT")
    return result
