"""Who is in each photo, in every image collection: what `search --person` filters on.

The ledger decides whose a face is, and `mirror_faces` copies that onto each
face; this copies it onto each photo: `people` holds the ids of the named
people with a face in the photo (a Chroma list, so a `where` can ask
`{"people": {"$contains": id}}`), and is removed when nobody named is in it.
Every change of a face's person goes through `mirror_faces`, which calls
`mirror_photos` for the faces' photos, so the two never drift apart for long:
a crash in between is repaired like the face mirror (the clustering phase
mirrors a batch's faces again when it re-runs).

A library holds one image collection per CLIP model (`daemon.store.library`):
the mirror writes each of them that is not dropped, so search finds the same
people whichever model is active, and a re-index in progress (whose photos
the re-indexer mirrors as it stores them, `mirror_photos(..., into=...)`)
completes with them right.

A library indexed before these keys existed is filled in once, when the
daemon starts (`backfill`), in every image collection: the people of every
photo with a named face, and `captured_ts` from the `captured_at` each image
already has. The ledger remembers that it was done.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from daemon.ledger.ledger import Ledger
from daemon.store.library import image_collections
from daemon.store.search import captured_ts

log = logging.getLogger(__name__)

MIRROR_VERSION = 1  # raise it when the keys mirrored here change: the backfill runs again
PAGE = 5000


def photo_of(face_id: str) -> str:
    """The photo (image sha256) of a face id "<sha256>:<n>"."""
    return face_id.rpartition(":")[0]


def mirror_photos(
    ledger: Ledger, store: Any, photos: Iterable[str], *, into: list[str] | None = None
) -> int:
    """Copy the ledger's people of these photos into their image metadata, in every image
    collection (`into`: only these); how many photos."""
    people = ledger.photos.people_in(photos)
    ids = sorted(people)
    metas = [{"people": people[sha] or None} for sha in ids]
    # Chroma ignores an update naming a record it does not hold (a photo not embedded).
    for name in into if into is not None else image_collections(ledger):
        store.update_images(ids, metas, name=name)
    return len(ids)


def backfill(ledger: Ledger, store: Any) -> bool:
    """Fill in `people` and `captured_ts` once for images indexed without them."""
    if ledger.photos.mirror_version() >= MIRROR_VERSION:
        return False
    photos = mirror_photos(ledger, store, ledger.photos.with_people())
    dated = 0
    for name in image_collections(ledger):
        offset = 0
        while True:
            rows = store.image_rows(offset=offset, limit=PAGE, name=name)
            if not len(rows):
                break
            offset += len(rows)
            todo = [
                (rid, ts)
                for rid, meta in zip(rows.ids, rows.metadatas, strict=True)
                if "captured_ts" not in meta
                and (ts := captured_ts(meta.get("captured_at"))) is not None
            ]
            ids = [rid for rid, _ in todo]
            store.update_images(ids, [{"captured_ts": ts} for _, ts in todo], name=name)
            dated += len(todo)
    ledger.photos.set_mirror_version(MIRROR_VERSION)
    log.info(
        "image metadata filled in: people of %d photos, capture times of %d records", photos, dated
    )
    return True
