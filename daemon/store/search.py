"""Find photos by text or by a similar photo, in the image collection of the library's model.

The embedding phase stores one record per image, id = the image's SHA-256,
with this metadata:

* `path`: absolute path of the original (str)
* `batch_id`: the ledger batch that brought it (int)
* `width`, `height`: upright size of the original in pixels (int)
* `captured_at`: EXIF DateTimeOriginal as ISO-8601 (str; absent when unknown)
* `model`: the CLIP model that made the vector (str)
* `indexed_at`: when the vector was stored (unix time, float)

Each CLIP model the library was indexed with has its own collection
(`daemon.store.library`); the caller passes the one to read and the model
that made it.

Queries use the same CLIP model as the library: if the collection was built
by another model (or dim), Store raises ModelMismatch instead of comparing
vectors from two different spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from daemon.errors import NotFound
from daemon.store.chroma import IMAGES

if TYPE_CHECKING:
    from PIL import Image

    from daemon.config import DecodeConfig
    from daemon.store.chroma import Hit, Store


class Embedder(Protocol):
    """What search needs of daemon.models.clip.ClipModel."""

    model_name: str

    @property
    def dim(self) -> int: ...

    def embed_text(self, texts: list[str]) -> np.ndarray: ...

    def embed_images(self, images: list[Image.Image]) -> np.ndarray: ...


@dataclass(frozen=True)
class SearchHit:
    path: str
    score: float  # cosine similarity in [-1, 1]
    image_id: str  # SHA-256 of the file
    batch_id: int | None


def search(
    text: str, k: int, *, store: Store, clip: Embedder, collection: str = IMAGES
) -> list[SearchHit]:
    """The k library photos closest to `text`, best first; [] for an empty library."""
    if k <= 0 or not _library_ready(store, clip, collection):
        return []
    vector = clip.embed_text([text])[0]
    return _to_hits(store.query_images(vector, k, name=collection))


def search_image(
    path: Path,
    k: int,
    *,
    store: Store,
    clip: Embedder,
    decode_cfg: DecodeConfig,
    collection: str = IMAGES,
) -> list[SearchHit]:
    """The k library photos closest to the photo at `path` (itself first if it is in it)."""
    from daemon.imaging.decode import decode

    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"{path}: no such photo", hint="Give the path of an image file.")
    if k <= 0 or not _library_ready(store, clip, collection):
        return []
    # The same decode as the pipeline (EXIF rotation, size limits), so a photo
    # already in the library gets the vector it was stored with.
    image = decode(path, decode_cfg).image
    vector = clip.embed_images([image])[0]
    return _to_hits(store.query_images(vector, k, name=collection))


def _library_ready(store: Store, clip: Embedder, collection: str) -> bool:
    """True when there is something to search; raises ModelMismatch for another model."""
    if not store.open_images(clip.model_name, clip.dim, create=False, name=collection):
        return False
    return store.count_images(collection) > 0


def _to_hits(hits: list[Hit]) -> list[SearchHit]:
    return [
        SearchHit(
            path=str(h.metadata.get("path", "")),
            score=h.score,
            image_id=h.id,
            batch_id=_int_or_none(h.metadata.get("batch_id")),
        )
        for h in hits
    ]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
