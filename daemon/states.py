"""Batch and batch-phase states, as stored in the ledger (one word each, never renamed)."""

from __future__ import annotations

from enum import StrEnum


class BatchState(StrEnum):
    CLAIMING = "claiming"  # id reserved, folder being moved and hashed
    WAITING = "waiting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PhaseState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
