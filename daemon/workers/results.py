"""A chunk's result into the ledger: checked whole first, then recorded as the local path does.

Only images and phases the ledger still has pending are recorded, and only when the
result names them by the SHA-256 the ledger knows, so a result that arrives twice (or
one left from another library on a shared Redis) changes nothing. Per-file errors go
through the pipeline's decode-failure path (one error row per file); outcomes through
`Pipeline.record`, phase by phase in photo order, with the faces' ledger rows written
before the faces outcomes, as the local faces phase writes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import TYPE_CHECKING, Any

from daemon.errors import Code, ImageError
from daemon.ledger.faces import NewFace
from daemon.vocab import ImageOutcome, ImageState, PendingImage, PhaseName
from daemon.workers.connection import PAYLOAD_VERSION

if TYPE_CHECKING:
    from daemon.phases.base import BatchInfo
    from daemon.phases.pipeline import Pipeline

FaceRows = list[tuple[str, float, float]]  # (face_id, det_score, area)


class BadResult(ValueError):
    """A result that cannot be read: nothing of it is recorded."""


class Recorder:
    """The batch's pending images, and the one way results reach the ledger."""

    def __init__(self, pipeline: Pipeline, info: BatchInfo, pending: list[PendingImage]) -> None:
        self.pipeline, self.info = pipeline, info
        self.phases = [str(p.name) for p in pipeline.image_phases]
        self.pending: dict[int, PendingImage] = {p.image_id: p for p in pending}

    def apply(self, result: Any) -> None:
        """Record a result's outcomes for the images and phases the ledger still has pending."""
        errors, by_phase, face_rows = self.parse(result)
        for item, error in errors:
            self.failed(item, error)
        for phase in self.phases:
            outcomes = by_phase[phase]
            if not outcomes:
                continue
            if phase == PhaseName.FACES:
                # Face rows before the outcome, as the local faces phase writes them.
                for item, rows in face_rows:
                    self.pipeline.ledger.faces.add(
                        self.info.batch_id,
                        item.image_id,
                        item.sha256,
                        [NewFace(fid, score, area) for fid, score, area in rows],
                    )
            self.pipeline.record(self.info, phase, outcomes)
            for o in outcomes:
                self.done(o.image_id, {phase})

    def parse(
        self, result: Any
    ) -> tuple[
        list[tuple[PendingImage, ImageError]],
        dict[str, list[ImageOutcome]],
        list[tuple[PendingImage, FaceRows]],
    ]:
        """Everything checked before anything is written: a bad result writes nothing."""
        errors: list[tuple[PendingImage, ImageError]] = []
        by_phase: dict[str, list[ImageOutcome]] = {p: [] for p in self.phases}
        face_rows: list[tuple[PendingImage, FaceRows]] = []
        try:
            if result.get("v") != PAYLOAD_VERSION:
                raise BadResult(f"version {result.get('v')}, expected {PAYLOAD_VERSION}")
            for entry in result["images"]:
                item = self.pending.get(int(entry["image_id"]))
                if item is None or item.sha256 != entry["sha256"]:
                    continue  # recorded already (a duplicate result), or not one of ours
                if entry.get("error"):
                    errors.append((item, _image_error(entry["error"])))
                    continue
                for phase in self.phases:
                    o = entry["outcomes"].get(phase)
                    if phase not in item.phases or o is None:
                        continue
                    by_phase[phase].append(
                        ImageOutcome(
                            item.image_id,
                            ImageState(o["state"]),
                            o.get("error_code"),
                            o.get("message"),
                            dict(o.get("detail") or {}),
                        )
                    )
                    if phase == PhaseName.FACES and entry.get("faces"):
                        rows = [
                            (str(f["face_id"]), float(f["det_score"]), float(f["area"]))
                            for f in entry["faces"]
                        ]
                        if any(not fid.startswith(item.sha256 + ":") for fid, _, _ in rows):
                            raise BadResult(f"face ids that are not {item.sha256}:<n>")
                        face_rows.append((item, rows))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise BadResult(f"{type(exc).__name__}: {exc}") from exc
        return errors, by_phase, face_rows

    def failed(self, item: PendingImage, error: ImageError) -> None:
        self.pipeline.record_failure(self.info, item, error)
        self.done(item.image_id, set(item.phases))

    def done(self, image_id: int, phases: set[str]) -> None:
        item = self.pending.get(image_id)
        if item is None:
            return
        left = item.phases - phases
        if left:
            self.pending[image_id] = dataclasses.replace(item, phases=frozenset(left))
        else:
            del self.pending[image_id]


def _image_error(raw: dict[str, Any]) -> ImageError:
    error = ImageError(str(raw["message"]))
    with contextlib.suppress(ValueError):  # a code this daemon does not know: UNREADABLE_IMAGE
        error.code = Code(raw["code"])
    return error
