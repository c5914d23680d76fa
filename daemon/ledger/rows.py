"""Rows of the ledger's tables as the records of `daemon.vocab`; vectors as the bytes it stores."""

from __future__ import annotations

import json
import sqlite3

import numpy as np

from daemon.vocab import Batch, BatchState


def batch_from_row(row: sqlite3.Row) -> Batch:
    return Batch(
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


def blob(vector: np.ndarray) -> bytes:
    """A vector as the ledger stores it (centroids, prototypes): raw float32."""
    return np.asarray(vector, dtype=np.float32).tobytes()


def unblob(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).copy()
