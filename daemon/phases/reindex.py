"""Re-indexing: every photo of the library embedded again with another CLIP model.

`imgtrain reindex` records a job in the ledger; the daemon works on it here,
between batches: it scans the library in image id order, a window of a few
chunks at a time, asks the store which of those photos the new model's
collection already holds (new batches go into both collections meanwhile,
and a crash may have stored a chunk it did not record), and decodes and
embeds the others through the same decode-ahead scheme as a batch, with the
metadata search filters on: the capture time, and who is in each photo (from
the ledger, `daemon.people.photos`). After each chunk's vectors are stored
the ledger records how far the scan got, so a restarted daemon goes on from
there and no finished photo is embedded twice.
The caller's `should_yield` is asked between chunks: a waiting batch, a pause
or a shutdown always comes first.

When the scan has passed the last photo, one ledger transaction makes the
new model the active one (search switches to it) and ends the job; with
`--drop-old` the old collection is then deleted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from daemon.errors import ImageError, ModelMismatch, ModelUnavailable
from daemon.imaging.decode import decode
from daemon.ledger.reindexes import LibraryImage, ReindexRow
from daemon.people.photos import mirror_photos
from daemon.phases.ahead import decode_ahead
from daemon.phases.base import PhaseContext
from daemon.phases.embedding import image_metadata
from daemon.status.reindex import ReindexTracker
from daemon.store.library import Slot, clip_config, sweep
from daemon.vocab import ClipModelState, ReindexState

log = logging.getLogger(__name__)

WINDOW_CHUNKS = 8  # chunks of photos whose presence in the new collection is asked at once


@dataclass
class _Item:
    image: LibraryImage
    decoded: Any = None  # daemon.imaging.decode.Decoded
    tensor: Any = None
    error: ImageError | None = None


class Reindexer:
    def __init__(self, ctx: PhaseContext, tracker: ReindexTracker, poke: Callable[[], None]):
        self.ctx, self.tracker, self.poke = ctx, tracker, poke
        self.ledger, self.store = ctx.ledger, ctx.store
        self.chunk = ctx.config.clip.batch_size
        self.workers = ctx.config.decode.workers

    def run(self, job: ReindexRow, should_yield: Callable[[], bool]) -> ReindexState | None:
        """Work on `job` until it ends (its new state) or `should_yield()` (None)."""
        try:
            slot = self._target(job)
        except (ModelUnavailable, ModelMismatch) as exc:
            log.error("re-index to %s failed: %s", job.model, exc)
            self.ledger.reindexes.finish(job.reindex_id, ReindexState.FAILED, str(exc))
            self.tracker.show(self.ledger.reindexes.get(job.reindex_id))
            return ReindexState.FAILED
        job = self._recount(job, slot)
        cursor = job.cursor
        log.info("re-index to %s: %d of %d photos done", job.model, job.done, job.total)
        self.tracker.begin()
        try:
            while not should_yield():
                window = self.ledger.reindexes.library_images(cursor, WINDOW_CHUNKS * self.chunk)
                if not window:
                    return self._complete(job, slot)
                have = self.store.image_ids_present(
                    [i.sha256 for i in window], name=slot.collection
                )
                # One photo twice in the library (a copy kept apart) is embedded once.
                missing = {i.sha256: i for i in reversed(window) if i.sha256 not in have}
                todo = sorted(missing.values(), key=lambda i: i.image_id)
                if todo and not self._embed(job, slot, todo, should_yield):
                    return None
                cursor = window[-1].image_id
                self.ledger.reindexes.advance(job.reindex_id, cursor=cursor)
            return None
        finally:
            self.tracker.end()

    def _target(self, job: ReindexRow) -> Slot:
        row = self.ledger.clip_models.get(job.model)
        if row is None or row.settings is None:
            raise ModelUnavailable(f"the ledger holds no settings for {job.model}")
        clip = self.ctx.models.clip_for(clip_config(self.ctx.config.clip, row.settings))
        clip.load()
        self.store.open_images(job.model, clip.dim, name=row.collection)
        return Slot(job.model, row.collection, clip)

    def _recount(self, job: ReindexRow, slot: Slot) -> ReindexRow:
        self.ledger.reindexes.advance(
            job.reindex_id,
            done=self.store.count_images(slot.collection),
            total=self.ledger.reindexes.library_size(),
        )
        row = self.ledger.reindexes.get(job.reindex_id)
        assert row is not None
        self.tracker.show(row)
        return row

    def _work(self, clip: Any, item: _Item) -> _Item:
        """In a decode worker: decode and preprocess one photo."""
        try:
            item.decoded = decode(item.image.path, self.ctx.config.decode)
            item.tensor = clip.preprocess(item.decoded.image)
        except ImageError as exc:
            item.error = exc
        if item.decoded is not None:
            item.decoded.image.close()
        return item

    def _embed(
        self,
        job: ReindexRow,
        slot: Slot,
        todo: list[LibraryImage],
        should_yield: Callable[[], bool],
    ) -> bool:
        """Embed and store `todo`, chunk by chunk; False if asked to yield on the way."""
        chunks = decode_ahead(
            [_Item(i) for i in todo],
            partial(self._work, slot.clip),
            chunk=self.chunk,
            workers=self.workers,
        )
        with contextlib.closing(chunks):
            t0 = time.monotonic()
            for items in chunks:
                good = [i for i in items if i.error is None]
                if good:
                    vectors = slot.clip.embed_tensors([i.tensor for i in good])
                    shas = [i.image.sha256 for i in good]
                    metas = [self._metadata(i, slot.model) for i in good]
                    self.store.upsert_images(shas, vectors, metas, name=slot.collection)
                    # A batch taken out meanwhile (`queue remove`) marks itself before it
                    # deletes vectors: a photo it took is either gone from the ledger
                    # now, or its vector was stored before that deletion.
                    gone = set(shas) - self.ledger.reindexes.held(shas)
                    self.store.delete_images(sorted(gone), name=slot.collection)
                    # Who is in them, read after the vectors are stored: a change made
                    # meanwhile (`people name`) mirrored into every collection then, or
                    # missed these records and is read here.
                    mirror_photos(self.ledger, self.store, shas, into=[slot.collection])
                for bad in (i for i in items if i.error is not None):
                    self._unreadable(bad)
                now = time.monotonic()
                self.ledger.reindexes.advance(
                    job.reindex_id,
                    cursor=items[-1].image.image_id,
                    done=self._done(job) + len(good),
                    embedded=len(good),
                    unreadable=len(items) - len(good),
                    seconds=now - t0,
                )
                t0 = now
                row = self.ledger.reindexes.get(job.reindex_id)
                assert row is not None
                self.tracker.advanced(row, len(good))
                self.poke()
                if should_yield():
                    return False
        return True

    def _done(self, job: ReindexRow) -> int:
        row = self.ledger.reindexes.get(job.reindex_id)
        return row.done if row is not None else 0

    @staticmethod
    def _metadata(item: _Item, model: str) -> dict[str, Any]:
        d, i = item.decoded, item.image
        return image_metadata(i.path, i.batch_id, d.width, d.height, d.captured_at, model)

    def _unreadable(self, item: _Item) -> None:
        exc = item.error
        assert exc is not None
        log.warning("re-index: %s %s %s", item.image.path, exc.code, exc.message)
        self.ledger.errors.add(
            str(item.image.path),
            str(exc.code),
            f"re-index: {exc.message}",
            batch_id=item.image.batch_id,
            image_id=item.image.image_id,
        )

    def _complete(self, job: ReindexRow, slot: Slot) -> ReindexState:
        """The scan is through: the new model becomes the active one, in one transaction."""
        job = self._recount(job, slot)
        message = (
            f"{job.unreadable} photos could not be read again and are not in the new"
            " collection (see the errors)"
            if job.unreadable
            else None
        )
        old = ClipModelState.DROPPED if job.drop_old else ClipModelState.KEPT
        with self.ledger.transaction():
            if not self.ledger.reindexes.finish(job.reindex_id, ReindexState.COMPLETED, message):
                row = self.ledger.reindexes.get(job.reindex_id)
                return row.state if row is not None else ReindexState.CANCELLED
            previous = self.ledger.clip_models.switch(job.model, old=old)
        if job.drop_old and previous is not None:
            sweep(self.ledger, self.store)
        log.info(
            "re-index to %s completed: %d photos; search now uses %s%s",
            job.model,
            job.total,
            slot.collection,
            f" ({previous.collection} {old})" if previous is not None else "",
        )
        self.tracker.show(self.ledger.reindexes.get(job.reindex_id))
        return ReindexState.COMPLETED
