"""Phase 1: CLIP image embeddings into the `images` collection.

Ids are the image's SHA-256, so a resumed or retried batch upserts the same
records again instead of adding new ones.
"""

from __future__ import annotations

import logging
from typing import Any

from daemon.phases.base import BatchInfo, DecodedImage, PhaseContext, Report
from daemon.vocab import ImageOutcome, ImageState, PhaseName

log = logging.getLogger(__name__)


class EmbeddingPhase:
    name = PhaseName.EMBEDDING
    takes_pixels = True  # CLIP's input is made on the GPU from a photo decoded there

    def __init__(self) -> None:
        self.clip = None
        self.store = None

    def setup(self, ctx: PhaseContext) -> None:
        if self.clip is not None:
            return
        clip = ctx.models.clip()
        clip.load()
        ctx.store.open_images(clip.model_name, clip.dim)
        self.clip, self.store = clip, ctx.store

    def prepare(self, image: DecodedImage) -> Any:
        if image.pixels is not None:
            return self.clip.preprocess_pixels(image.pixels)
        return self.clip.preprocess(image.image)

    def process(
        self, batch: BatchInfo, images: list[DecodedImage], report: Report
    ) -> list[ImageOutcome]:
        # Prepared in the decode workers; preprocessed here only when called without them.
        tensors = [
            t if (t := d.prepared.get(self.name)) is not None else self.prepare(d) for d in images
        ]
        vectors = self.clip.embed_tensors(tensors)
        metadatas = [
            {
                "path": str(d.path),
                "batch_id": batch.batch_id,
                "width": d.width,
                "height": d.height,
                "captured_at": d.captured_at,
                "model": self.clip.model_name,
            }
            for d in images
        ]
        self.store.upsert_images([d.sha256 for d in images], vectors, metadatas)
        report(len(images))
        return [ImageOutcome(d.image_id, ImageState.DONE) for d in images]

    def cleanup(self) -> None:
        """Models stay loaded between batches."""
