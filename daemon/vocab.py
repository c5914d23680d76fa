"""The words every part of imgtrain shares, defined once, at the bottom.

Phase names with their kind and order, the states of a batch, of a batch's
phase, of an image's phase and of the daemon, and the records that travel
between the layers (`Batch`, `FileEntry`, `SkippedFile`, `PendingImage`,
`ImageOutcome`). The values are what
the ledger stores and the status file shows, so they are never renamed.
Everything else imports them from here; this module imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class PhaseName(StrEnum):
    EMBEDDING = "embedding"
    FACES = "faces"
    CLUSTERING = "clustering"


class PhaseKind(StrEnum):
    """How a phase is fed: per image (on decoded photos) or once per batch."""

    IMAGE = "image"  # one step per image; the ledger keeps a row per image and phase
    BATCH = "batch"  # a few declared sub-steps after the image phases; restarts whole


# The order every batch runs its phases in, with each phase's kind.
PHASE_KINDS: dict[PhaseName, PhaseKind] = {
    PhaseName.EMBEDDING: PhaseKind.IMAGE,
    PhaseName.FACES: PhaseKind.IMAGE,
    PhaseName.CLUSTERING: PhaseKind.BATCH,
}
PHASES: tuple[PhaseName, ...] = tuple(PHASE_KINDS)
IMAGE_PHASES: tuple[PhaseName, ...] = tuple(
    p for p, k in PHASE_KINDS.items() if k is PhaseKind.IMAGE
)
BATCH_PHASES: tuple[PhaseName, ...] = tuple(
    p for p, k in PHASE_KINDS.items() if k is PhaseKind.BATCH
)


def is_batch_phase(name: str) -> bool:
    return PHASE_KINDS.get(PhaseName(name)) is PhaseKind.BATCH


class BatchState(StrEnum):
    CLAIMING = "claiming"  # id reserved, folder being moved and hashed
    WAITING = "waiting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REMOVING = "removing"  # `imgtrain queue remove` under way (run it again if interrupted)
    REMOVED = "removed"  # taken back out: its images, faces and vectors are gone


class PhaseState(StrEnum):
    """A phase of one batch: in the ledger and in the status file's `phases`."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class ImageState(StrEnum):
    """One image in one image phase, in the ledger."""

    PENDING = "pending"
    DONE = "done"
    NO_FACES = "no_faces"  # analysed, nothing found: never redone
    FAILED = "failed"
    SKIPPED = "skipped"  # phase disabled, or a duplicate of another image


class DaemonStatus(StrEnum):
    """The status file's `status`."""

    IDLE = "idle"
    TRAINING = "training"
    PAUSED = "paused"
    ERROR = "error"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Batch:
    """One claimed folder (or the loose photos of one claim), as the ledger holds it."""

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


@dataclass(frozen=True)
class FileEntry:
    """A photo found in a claimed folder: where it is inside the batch, and its content hash."""

    rel_path: str
    sha256: str
    size: int
    format: str | None


@dataclass(frozen=True)
class SkippedFile:
    """A file of a claimed folder that is not used, and why (a stable error code)."""

    rel_path: str
    code: str
    message: str


@dataclass(frozen=True)
class PendingImage:
    """An image of a batch with image phases still to run: what the pipeline reads to resume."""

    image_id: int
    rel_path: str
    sha256: str
    format: str | None
    phases: frozenset[str]  # the image phases still pending for it


@dataclass
class ImageOutcome:
    """What one image phase did with one image; the ledger records it."""

    image_id: int
    state: ImageState
    error_code: str | None = None
    message: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"faces": 2}


class ClipModelState(StrEnum):
    """What a CLIP model's collection is to the library (`imgtrain reindex`)."""

    ACTIVE = "active"  # search and new batches use it
    BUILDING = "building"  # being filled by a re-index, or left partial by a cancelled one
    KEPT = "kept"  # complete when it stopped being active; a re-index back to it is a catch-up
    DROPPED = "dropped"  # its collection is deleted


class ReindexState(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
