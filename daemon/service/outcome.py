"""What an exception out of a batch means for the batch: one mapping, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from daemon.errors import Cancelled, ImgtrainError, ModelMismatch, ModelUnavailable
from daemon.vocab import BatchState


@dataclass(frozen=True)
class Outcome:
    state: BatchState | None  # None: the batch stays running and resumes later
    code: str | None = None
    message: str | None = None


def outcome_of(exc: Exception | None) -> Outcome:
    """Completed, cancelled, failed with the reason, or left to resume (a missing model)."""
    if exc is None:
        return Outcome(BatchState.COMPLETED)
    if isinstance(exc, Cancelled):
        return Outcome(BatchState.CANCELLED, str(exc.code), exc.message)
    if isinstance(exc, ModelUnavailable | ModelMismatch):
        # Not the batch's fault: it waits for the model and resumes.
        return Outcome(None, str(exc.code), exc.message)
    if isinstance(exc, ImgtrainError):
        return Outcome(BatchState.FAILED, str(exc.code), exc.message)
    return Outcome(BatchState.FAILED, "BATCH_FAILED", f"{type(exc).__name__}: {exc}")
