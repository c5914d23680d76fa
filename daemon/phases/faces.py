"""Phase 2: face detection and face embeddings into the `faces` collection.

Each face gets id `<image sha256>:<n>` (faces sorted by position, so the ids
are the same on a re-run) and a ledger row for clustering. An image analysed
with no face found is recorded as `no_faces`, never as pending, so it is not
analysed again.
"""

from __future__ import annotations

import json
import logging
from contextlib import closing
from typing import Any

from daemon.ledger.faces import NewFace
from daemon.phases.base import BatchInfo, DecodedImage, PhaseContext, Report
from daemon.vocab import ImageOutcome, ImageState, PhaseName

log = logging.getLogger(__name__)


class FacesPhase:
    name = PhaseName.FACES

    def __init__(self) -> None:
        self.analyzer = None
        self.store = None
        self.ledger = None

    def setup(self, ctx: PhaseContext) -> None:
        if self.analyzer is not None:
            return
        analyzer = ctx.models.faces()
        analyzer.load()
        ctx.store.open_faces(analyzer.model_name, analyzer.dim)
        self.analyzer, self.store, self.ledger = analyzer, ctx.store, ctx.ledger

    def prepare(self, image: DecodedImage) -> Any:
        """Nothing ahead: a BGR copy per image would double the chunks' memory."""
        return None

    def process(
        self, batch: BatchInfo, images: list[DecodedImage], report: Report
    ) -> list[ImageOutcome]:
        outcomes = []
        # The store and the ledger are written here, on the pipeline's thread,
        # in image order; only the models run in the analyzer's threads, and
        # closing() stops them at once if a write fails.
        with closing(self.analyzer.analyze_images([(d.image, d.scale) for d in images])) as found:
            for d, faces in zip(images, found, strict=True):
                if faces:
                    self._store(batch, d, faces)
                    outcomes.append(
                        ImageOutcome(d.image_id, ImageState.DONE, detail={"faces": len(faces)})
                    )
                else:
                    outcomes.append(
                        ImageOutcome(d.image_id, ImageState.NO_FACES, detail={"faces": 0})
                    )
                report(1, faces=len(faces))
        return outcomes

    def _store(self, batch: BatchInfo, d: DecodedImage, faces: list) -> None:
        import numpy as np

        ids = [f"{d.sha256}:{n}" for n in range(len(faces))]
        metadatas = [
            {
                "image_id": d.sha256,
                "batch_id": batch.batch_id,
                "path": str(d.path),
                "bbox": json.dumps([round(float(v), 1) for v in f.bbox]),
                "landmarks": json.dumps(
                    [[round(float(x), 1), round(float(y), 1)] for x, y in f.landmarks]
                ),
                "det_score": round(float(f.score), 4),
                "person": "",
                "cluster": "",
                "suggested_person": "",
            }
            for f in faces
        ]
        # Vectors first, ledger rows second: a crash in between repeats an
        # idempotent upsert; the reverse could leave rows without vectors.
        self.store.upsert_faces(ids, np.stack([f.embedding for f in faces]), metadatas)
        rows = [(fid, float(f.score), float(f.area)) for fid, f in zip(ids, faces, strict=True)]
        self.record_rows(batch.batch_id, d, rows, faces)

    def record_rows(
        self, batch_id: int, d: DecodedImage, rows: list[tuple[str, float, float]], faces: list
    ) -> None:
        """The ledger rows clustering reads. A worker (daemon.workers) sends them back instead."""
        self.ledger.faces.add(
            batch_id, d.image_id, d.sha256, [NewFace(fid, score, area) for fid, score, area in rows]
        )

    def cleanup(self) -> None:
        """Models stay loaded between batches."""
