"""Find photos by text or by a similar photo, in the image collection of the library's model.

The embedding phase stores one record per image, id = the image's SHA-256,
with this metadata:

* `path`: absolute path of the original (str)
* `batch_id`: the ledger batch that brought it (int)
* `width`, `height`: upright size of the original in pixels (int)
* `captured_at`: EXIF DateTimeOriginal as ISO-8601 (str; absent when unknown)
* `captured_ts`: the same moment as seconds (float; see `captured_ts`)
* `model`: the CLIP model that made the vector (str)
* `indexed_at`: when the vector was stored (unix time, float)

and `daemon.people.photos` keeps one more key in step with the ledger, in
every image collection:

* `people`: ids of the named people whose faces are in the photo (a Chroma
  list of ints; absent when nobody named is in it)

Each CLIP model the library was indexed with has its own collection
(`daemon.store.library`); the caller passes the one to read and the model
that made it.

`Filters` narrow a search inside Chroma (a metadata `where`), so the k results
are the k best of the photos that pass, however few of the library those are.
Chroma's local index searches its HNSW graph for the passing photos; the fewer
pass, the more of the graph it walks (150 ms for one photo of 100,000, 5 ms
unfiltered). So when the caller knows that at most EXACT_MAX photos can pass
(`Filters.at_most`, counted in the ledger), Chroma is asked for exactly those
photos' vectors (the same `where`) and they are ranked here, exactly: 15-50 ms.

Queries use the same CLIP model as the library: if the collection was built
by another model (or dim), Store raises ModelMismatch instead of comparing
vectors from two different spaces.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from daemon.errors import NotFound
from daemon.store.chroma import IMAGES
from daemon.store.records import Hit

EXACT_MAX = 2000  # photos passing a filter, up to which ranking them here beats Chroma
if TYPE_CHECKING:
    from PIL import Image

    from daemon.config import DecodeConfig
    from daemon.store.chroma import Store


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


def captured_ts(captured_at: str | None) -> float | None:
    """A capture time as seconds, read as the camera's wall clock (any UTC offset ignored).

    Photos rarely say their time zone; comparing wall clocks makes "after
    2024-06-01" mean the same day for every photo, wherever it was taken.
    """
    if not captured_at:
        return None
    try:
        when = datetime.fromisoformat(captured_at)
    except ValueError:
        return None
    return when.replace(tzinfo=UTC).timestamp()


def parse_when(text: str) -> float:
    """YYYY, YYYY-MM, YYYY-MM-DD or an ISO date-time, as `captured_ts` counts time."""
    text = text.strip()
    try:
        if len(text) == 4 and text.isdigit():
            when = datetime(int(text), 1, 1)
        elif len(text) == 7 and text[4] == "-":
            when = datetime(int(text[:4]), int(text[5:]), 1)
        else:
            when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a date: {text!r} (use YYYY-MM-DD)") from None
    return when.replace(tzinfo=UTC).timestamp()


@dataclass(frozen=True)
class Filters:
    """What a result must be: every photo passing shows all `people` and so on."""

    people: tuple[int, ...] = ()  # person ids (all of them in the photo)
    after: float | None = None  # captured_ts >= after
    before: float | None = None  # captured_ts < before
    batches: tuple[int, ...] = ()  # any of these batches
    at_most: int | None = None  # photos that can pass at most (the ledger's count), if known

    def where(self) -> dict[str, Any] | None:
        """The Chroma `where` clause; None when nothing is filtered."""
        clauses: list[dict[str, Any]] = [{"people": {"$contains": p}} for p in self.people]
        if self.after is not None:
            clauses.append({"captured_ts": {"$gte": self.after}})
        if self.before is not None:
            clauses.append({"captured_ts": {"$lt": self.before}})
        if len(self.batches) == 1:
            clauses.append({"batch_id": self.batches[0]})
        elif self.batches:
            clauses.append({"batch_id": {"$in": list(self.batches)}})
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def search(
    text: str,
    k: int,
    *,
    store: Store,
    clip: Embedder,
    filters: Filters | None = None,
    collection: str = IMAGES,
) -> list[SearchHit]:
    """The k library photos closest to `text`, best first; [] for an empty library."""
    if k <= 0 or not _library_ready(store, clip, collection):
        return []
    vector = clip.embed_text([text])[0]
    return _to_hits(nearest(store, vector, k, filters or Filters(), collection))


def search_image(
    path: Path,
    k: int,
    *,
    store: Store,
    clip: Embedder,
    decode_cfg: DecodeConfig,
    filters: Filters | None = None,
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
    return _to_hits(nearest(store, vector, k, filters or Filters(), collection))


def nearest(
    store: Store, vector: np.ndarray, k: int, filters: Filters, collection: str = IMAGES
) -> list[Hit]:
    """The k photos of `collection` passing `filters` most like `vector`, best first."""
    where = filters.where()
    if where is None or filters.at_most is None or filters.at_most > EXACT_MAX:
        return store.query_images(vector, k, where, name=collection)
    rows = store.image_rows(limit=None, where=where, bare=True, name=collection)
    if not len(rows):
        return []
    scores = _unit(rows.embeddings) @ _unit(np.asarray(vector, dtype=np.float32))
    best = np.argsort(-scores, kind="stable")[:k]
    found = store.get_images([rows.ids[i] for i in best], name=collection)
    meta = {r["id"]: r["metadata"] for r in found}
    return [Hit(rows.ids[i], float(scores[i]), meta.get(rows.ids[i], {})) for i in best]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


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
