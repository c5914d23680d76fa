"""Phase 1: CLIP image embeddings into the image collection of the library's model.

Ids are the image's SHA-256, so a resumed or retried batch upserts the same
records again instead of adding new ones. While a re-index runs
(`imgtrain reindex`), each image is embedded by both models, into both
collections (`daemon.store.library.writers`), so the new collection is
complete the moment the re-index has been through the older photos.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from daemon.phases.base import BatchInfo, DecodedImage, PhaseContext, Report
from daemon.store.library import Slot, worker_slot, writers
from daemon.store.search import captured_ts
from daemon.vocab import ImageOutcome, ImageState, PhaseName

log = logging.getLogger(__name__)


def image_metadata(
    path: Path, batch_id: int, width: int, height: int, captured_at: str | None, model: str
) -> dict[str, Any]:
    """An image record's metadata (see daemon.store.search), for every writer of one."""
    return {
        "path": str(path),
        "batch_id": batch_id,
        "width": width,
        "height": height,
        "captured_at": captured_at,
        "captured_ts": captured_ts(captured_at),
        "model": model,
        "indexed_at": round(time.time(), 3),
    }


class EmbeddingPhase:
    name = PhaseName.EMBEDDING
    takes_pixels = True  # CLIP's input is made on the GPU from a photo decoded there

    def __init__(self) -> None:
        self.slots: list[Slot] = []
        self.store = None
        self.ledger = None
        self.reindex_id: int | None = None

    @property
    def clip(self) -> Any:
        """The model search uses now (the active one's, when it can be loaded)."""
        return self.slots[0].clip if self.slots else None

    @property
    def collection(self) -> str | None:
        return self.slots[0].collection if self.slots else None

    def setup(self, ctx: PhaseContext) -> None:
        if self.slots:
            return
        if ctx.ledger is None:  # a remote worker: the daemon keeps the ledger
            self.slots, self.store = [worker_slot(ctx.store, ctx.models)], ctx.store
            return
        found = writers(ctx.ledger, ctx.store, ctx.models)
        self.slots, self.store, self.ledger = found.slots, ctx.store, ctx.ledger
        self.reindex_id = found.reindex.reindex_id if found.reindex else None
        if len(self.slots) > 1:
            log.info(
                "re-index to %s running: new photos go into %s",
                self.slots[-1].model,
                " and ".join(s.collection for s in self.slots),
            )

    def prepare(self, image: DecodedImage) -> Any:
        return tuple(self._input(s, image) for s in self.slots)

    @staticmethod
    def _input(slot: Slot, image: DecodedImage) -> Any:
        """CLIP's input for one model: from GPU pixels when decoded there, else from the image."""
        if image.pixels is not None:
            return slot.clip.preprocess_pixels(image.pixels)
        return slot.clip.preprocess(image.image)

    def process(
        self, batch: BatchInfo, images: list[DecodedImage], report: Report
    ) -> list[ImageOutcome]:
        slots = self._slots()
        for n, slot in enumerate(slots):
            # Prepared in the decode workers; preprocessed here only when called without them.
            tensors = [
                t[n] if (t := d.prepared.get(self.name)) else self._input(slot, d) for d in images
            ]
            vectors = slot.clip.embed_tensors(tensors)
            metadatas = [
                image_metadata(d.path, batch.batch_id, d.width, d.height, d.captured_at, slot.model)
                for d in images
            ]
            self.store.upsert_images(
                [d.sha256 for d in images], vectors, metadatas, name=slot.collection
            )
        report(len(images))
        return [ImageOutcome(d.image_id, ImageState.DONE) for d in images]

    def _slots(self) -> list[Slot]:
        """The re-index's collection only while it runs: `imgtrain reindex --cancel` stops it."""
        if self.reindex_id is None or len(self.slots) < 2:
            return self.slots
        job = self.ledger.reindexes.open()
        if job is not None and job.reindex_id == self.reindex_id:
            return self.slots
        log.info("re-index %d ended: new photos go into %s only", self.reindex_id, self.collection)
        self.slots, self.reindex_id = self.slots[:1], None
        return self.slots

    def cleanup(self) -> None:
        """Models stay loaded between batches."""
