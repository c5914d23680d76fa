"""One chunk job's pieces: the chunk record, what travels in a job, and what a failed job said.

A job carries JSON, never pickles, so reading it cannot run code: the images'
ids, hashes and paths inside the batch, the phases still pending for each,
and with `workers.send_bytes` the photo's bytes (base64).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon.errors import UnreadableImage
from daemon.vocab import PendingImage
from daemon.workers.connection import PAYLOAD_VERSION

if TYPE_CHECKING:
    from rq.job import Job

    from daemon.phases.base import BatchInfo


@dataclass
class Chunk:
    index: int
    images: list[PendingImage]
    attempt: int = 0
    failures: int = 0
    job_id: str = ""
    started_seen: float | None = None  # our monotonic clock when we first saw it started


def job_items(
    images: list[PendingImage], root: Path, send_bytes: bool
) -> tuple[list[dict[str, Any]], list[tuple[PendingImage, UnreadableImage]]]:
    """The images as a job carries them, and those whose bytes could not be read."""
    items: list[dict[str, Any]] = []
    unreadable: list[tuple[PendingImage, UnreadableImage]] = []
    for img in images:
        item: dict[str, Any] = {
            "image_id": img.image_id,
            "sha256": img.sha256,
            "rel_path": img.rel_path,
            "phases": sorted(img.phases),
        }
        if send_bytes:
            try:
                data = (root / img.rel_path).read_bytes()
            except OSError as exc:
                name = Path(img.rel_path).name
                reason = exc.strerror or str(exc)
                unreadable.append((img, UnreadableImage(f"{name}: {reason}", path=img.rel_path)))
                continue
            item["data"] = base64.b64encode(data).decode("ascii")
        items.append(item)
    return items, unreadable


def job_payload(info: BatchInfo, chunk: Chunk, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "v": PAYLOAD_VERSION,
        "batch_id": info.batch_id,
        "name": info.name,
        "root": str(info.path),
        "chunk": chunk.index,
        "attempt": chunk.attempt,
        "images": items,
    }


def failure_text(job: Job) -> str:
    """The last line of a failed job's traceback: the error, without the stack."""
    result = job.latest_result()
    text = (getattr(result, "exc_string", None) or "").strip()
    return text.splitlines()[-1] if text else f"the job ended {job.get_status(refresh=False)}"


def as_text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)
