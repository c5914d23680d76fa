"""The vector store: ChromaDB collections of image vectors (one per CLIP model) and `faces`.

Embedded (`chromadb.PersistentClient` on `config.chroma_path`) by default, or a
Chroma server when `store.url` is set. Every collection uses cosine space with
the HNSW settings from `config.store` (chromadb 1.x `configuration`) and
records in its metadata the `model` and `dim` that made its vectors: opening
it with another model raises ModelMismatch unless it is still empty. The
library's first CLIP model keeps the name `images`; `daemon.store.library`
names the others and knows which one search uses. Record ids are
content-derived (image SHA-256, `<sha256>:<n>` for faces), so every write is
an idempotent upsert, merging into an existing record's metadata
(`daemon.store.records` makes metadata Chroma-legal).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.errors import DiskFull, InvalidState, StoreUnavailable
from daemon.redact import redact, redact_url
from daemon.store.records import FaceRows, Hit, clean_metadata, connect, mismatch

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from daemon.config import Config

log = logging.getLogger(__name__)

IMAGES = "images"
FACES = "faces"


class Store:
    """One connection to Chroma; call open_images/open_faces before writing."""

    def __init__(self, config: Config) -> None:
        self._cfg = config.store
        self._path = config.chroma_path
        # Shown in errors, the log and doctor: never with a password in it.
        self.where = redact_url(self._cfg.url) if self._cfg.url else str(self._path)
        with self._guard("connect to"):
            self._client: ClientAPI = connect(self._cfg, self._path, self.where)
            self._max_batch = self._client.get_max_batch_size()
        self._cols: dict[str, Collection] = {}
        self._opened: set[str] = set()

    # -- errors ------------------------------------------------------------------
    @contextmanager
    def _guard(self, doing: str) -> Iterator[None]:
        """Turn transport and storage failures into typed errors naming the store."""
        import httpx
        from chromadb.errors import InternalError

        try:
            yield
        except (httpx.TransportError, OSError, InternalError) as exc:
            message = f"could not {doing} the Chroma store at {self.where}: {redact(str(exc))}"
            # Chroma's Rust core reports a full disk only in its message text.
            if getattr(exc, "errno", None) == errno.ENOSPC or "os error 28" in str(exc):
                raise DiskFull(message) from exc
            raise StoreUnavailable(message) from exc

    # -- collections ---------------------------------------------------------------
    def open_images(self, model: str, dim: int, *, create: bool = True, name: str = IMAGES) -> bool:
        """Check (and by default create) image collection `name` for vectors of `model`;
        False if absent."""
        return self._open(name, model, dim, create)

    def open_faces(self, model: str, dim: int, *, create: bool = True) -> bool:
        return self._open(FACES, model, dim, create)

    def _configuration(self) -> dict[str, Any]:
        return {
            "hnsw": {
                "space": "cosine",
                "ef_search": self._cfg.hnsw_ef_search,
                "ef_construction": self._cfg.hnsw_ef_construction,
                "max_neighbors": self._cfg.hnsw_max_neighbors,
            }
        }

    def _lookup(self, name: str) -> Collection | None:
        from chromadb.errors import NotFoundError

        if name in self._cols:
            return self._cols[name]
        with self._guard("read"):
            try:
                col = self._client.get_collection(name)
            except NotFoundError:
                return None
        self._cols[name] = col
        return col

    def _open(self, name: str, model: str, dim: int, create: bool) -> bool:
        col = self._lookup(name)
        if col is None:
            if not create:
                return False
            with self._guard("create a collection in"):
                col = self._client.get_or_create_collection(
                    name,
                    configuration=self._configuration(),  # type: ignore[arg-type]
                    metadata={"model": model, "dim": dim},
                    embedding_function=None,
                )
            self._cols[name] = col
        meta = dict(col.metadata or {})
        stored_model, stored_dim = meta.get("model"), meta.get("dim")
        if (stored_model, stored_dim) != (model, dim):
            with self._guard("read"):
                empty = col.count() == 0
            if not empty:
                raise mismatch(name, model, dim, bool(self._cfg.url), stored_model, stored_dim)
            if create:
                log.info("relabelling empty collection %s: %s dim %s", name, model, dim)
                with self._guard("write"):
                    col.modify(metadata={**meta, "model": model, "dim": dim})
        if create:  # a reader (search) leaves the index settings alone
            self._tune(name, col)
        self._opened.add(name)
        return True

    def _tune(self, name: str, col: Collection) -> None:
        """ef_search may change on an existing index; build-time settings may not."""
        hnsw = dict((col.configuration_json or {}).get("hnsw") or {})
        if hnsw.get("ef_search") not in (None, self._cfg.hnsw_ef_search):
            with self._guard("write"):
                col.modify(configuration={"hnsw": {"ef_search": self._cfg.hnsw_ef_search}})
        for key in ("ef_construction", "max_neighbors"):
            want = getattr(self._cfg, f"hnsw_{key}")
            if hnsw.get(key) not in (None, want):
                log.info(
                    "%s keeps hnsw %s=%s: store.hnsw_%s=%s applies to new stores only",
                    *(name, key, hnsw.get(key), key, want),
                )

    def _writable(self, name: str) -> Collection:
        if name not in self._opened:
            raise InvalidState(
                f"the '{name}' collection was written before it was opened",
                hint="Call Store.open_images/open_faces with the model first (a bug).",
            )
        return self._cols[name]

    # -- shared record operations ------------------------------------------------------
    def _batches(self, n: int) -> Iterator[slice]:
        for start in range(0, n, self._max_batch):
            yield slice(start, start + self._max_batch)

    def _upsert(
        self, name: str, ids: Sequence[str], embeddings: np.ndarray, metadatas: Sequence[dict]
    ) -> None:
        if len(ids) != len(embeddings) or len(ids) != len(metadatas):
            raise ValueError(
                f"{len(ids)} ids, {len(embeddings)} embeddings, {len(metadatas)} metadatas"
            )
        col = self._writable(name)
        # The same id twice in one call is one record: the last one wins.
        last = {rid: i for i, rid in enumerate(ids)}
        order = sorted(last.values())
        ids = [ids[i] for i in order]
        vectors = np.ascontiguousarray(np.asarray(embeddings, dtype=np.float32)[order])
        metas = [clean_metadata(metadatas[i]) or None for i in order]
        with self._guard("write to"):
            for part in self._batches(len(ids)):
                col.upsert(ids=ids[part], embeddings=vectors[part], metadatas=metas[part])  # type: ignore[arg-type]

    def _present(self, name: str, ids: Sequence[str]) -> set[str]:
        col = self._lookup(name)
        if col is None or not ids:
            return set()
        found: set[str] = set()
        with self._guard("read"):
            for part in self._batches(len(ids)):
                found.update(col.get(ids=list(ids[part]), include=[])["ids"])
        return found

    def _count(self, name: str) -> int:
        col = self._lookup(name)
        if col is None:
            return 0
        with self._guard("read"):
            return col.count()

    def _query(
        self, name: str, embeddings: np.ndarray, k: int, where: dict | None = None
    ) -> list[list[Hit]]:
        """The k nearest records (best first) of each row of `embeddings`, within `where`."""
        col = self._lookup(name)
        vectors = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
        if col is None or k <= 0:
            return [[] for _ in vectors]
        out: list[list[Hit]] = []
        with self._guard("query"):
            for part in self._batches(len(vectors)):
                res = col.query(
                    query_embeddings=vectors[part],
                    n_results=k,
                    where=where or None,
                    include=["metadatas", "distances"],  # type: ignore[list-item]
                )
                dists = res["distances"] or [[]] * len(res["ids"])
                metas = res["metadatas"] or [[{}] * len(ids) for ids in res["ids"]]
                for ids, ds, ms in zip(res["ids"], dists, metas, strict=True):
                    hits = [
                        Hit(rid, min(1.0, max(-1.0, 1.0 - float(d))), dict(m or {}))
                        for rid, d, m in zip(ids, ds, ms, strict=True)
                    ]
                    out.append(sorted(hits, key=lambda h: h.score, reverse=True))
        return out

    def _rows(
        self,
        name: str,
        ids: list[str] | None,
        where: dict[str, Any] | None,
        limit: int | None,
        offset: int | None = None,
        include: tuple[str, ...] = ("embeddings", "metadatas"),
    ) -> FaceRows:
        col = self._lookup(name)
        dim = self._dim(name)
        if col is None or ids == []:
            return FaceRows([], np.zeros((0, dim), np.float32), [])
        out_ids: list[str] = []
        vectors: list[np.ndarray] = []
        metas: list[dict[str, Any]] = []
        chunks: list[list[str] | None] = (
            [None] if ids is None else [list(ids[p]) for p in self._batches(len(ids))]
        )
        with self._guard("read"):
            for chunk in chunks:
                res = col.get(
                    ids=chunk,
                    where=where or None,
                    limit=limit,
                    offset=offset,
                    include=list(include),  # type: ignore[arg-type]
                )
                out_ids.extend(res["ids"])
                if len(res["ids"]) and "embeddings" in include:
                    vectors.append(np.asarray(res["embeddings"], dtype=np.float32))
                metas.extend(dict(m or {}) for m in res["metadatas"] or [{}] * len(res["ids"]))
        if limit is not None:
            out_ids, metas = out_ids[:limit], metas[:limit]
        emb = np.concatenate(vectors)[: len(out_ids)] if vectors else np.zeros((0, dim))
        return FaceRows(out_ids, emb.astype(np.float32, copy=False), metas)

    def _dim(self, name: str) -> int:
        col = self._cols.get(name)
        return int((col.metadata or {}).get("dim", 0)) if col is not None else 0

    def _update(self, name: str, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Change only the given keys; a None value removes the key."""
        if len(ids) != len(metadatas):
            raise ValueError(f"{len(ids)} ids but {len(metadatas)} metadatas")
        col = self._lookup(name)
        if col is None or not ids:
            return
        metas: list[dict[str, Any]] = [
            {**clean_metadata(m), **{k: None for k, v in m.items() if v is None}} for m in metadatas
        ]
        with self._guard("write to"):
            for part in self._batches(len(ids)):
                col.update(ids=list(ids[part]), metadatas=metas[part])  # type: ignore[arg-type]

    def _delete(self, name: str, ids: list[str]) -> None:
        col = self._lookup(name)
        if col is None or not ids:
            return
        with self._guard("delete from"):
            for part in self._batches(len(ids)):
                col.delete(ids=list(ids[part]))

    # -- collections -------------------------------------------------------------------
    def image_collections(self) -> dict[str, dict[str, Any]]:
        """{name: its metadata (model, dim)} for every image collection, `images` first."""
        with self._guard("read"):
            found = self._client.list_collections()
        cols = {c.name: c for c in found if c.name == IMAGES or c.name.startswith(f"{IMAGES}-")}
        self._cols.update(cols)
        names = sorted(cols, key=lambda n: (n != IMAGES, n))
        return {n: dict(cols[n].metadata or {}) for n in names}

    def drop_collection(self, name: str) -> bool:
        """Delete a collection and its vectors; False if there was none."""
        from chromadb.errors import NotFoundError

        self._cols.pop(name, None)
        self._opened.discard(name)
        with self._guard("delete a collection in"):
            try:
                self._client.delete_collection(name)
            except NotFoundError:
                return False
        return True

    # -- images (`name`: the collection of one CLIP model) ---------------------------------
    def upsert_images(
        self,
        ids: list[str],
        embeddings: np.ndarray,
        metadatas: list[dict[str, Any]],
        *,
        name: str = IMAGES,
    ) -> None:
        self._upsert(name, ids, embeddings, metadatas)

    def image_ids_present(self, ids: list[str], *, name: str = IMAGES) -> set[str]:
        return self._present(name, ids)

    def count_images(self, name: str = IMAGES) -> int:
        return self._count(name)

    def get_images(self, ids: list[str], *, name: str = IMAGES) -> list[dict[str, Any]]:
        """[{"id", "metadata"}] for the ids that exist, in the order asked."""
        rows = self._rows(name, list(dict.fromkeys(ids)), None, None, include=("metadatas",))
        found = dict(zip(rows.ids, rows.metadatas, strict=True))
        return [{"id": rid, "metadata": found[rid]} for rid in dict.fromkeys(ids) if rid in found]

    def update_images(
        self, ids: list[str], metadatas: list[dict[str, Any]], *, name: str = IMAGES
    ) -> None:
        self._update(name, ids, metadatas)

    def delete_images(self, ids: list[str], *, name: str = IMAGES) -> None:
        self._delete(name, ids)

    def query_images(
        self, embedding: np.ndarray, k: int, where: dict | None = None, *, name: str = IMAGES
    ) -> list[Hit]:
        return self._query(name, embedding, k, where)[0]

    def neighbours_images(
        self, embeddings: np.ndarray, k: int, *, name: str = IMAGES
    ) -> list[list[Hit]]:
        return self._query(name, embeddings, k)  # the k nearest of each, in few calls

    def image_rows(
        self,
        offset: int = 0,
        limit: int | None = 5000,
        where: Any = None,
        bare: bool = False,
        *,
        name: str = IMAGES,
    ) -> FaceRows:
        """A page of the images passing `where`, with vectors (`bare`: without metadata)."""
        keys = ("embeddings",) if bare else ("embeddings", "metadatas")
        return self._rows(name, None, where, limit, offset, keys)

    # -- faces -------------------------------------------------------------------------
    def upsert_faces(
        self, ids: list[str], embeddings: np.ndarray, metadatas: list[dict[str, Any]]
    ) -> None:
        self._upsert(FACES, ids, embeddings, metadatas)

    def get_faces(
        self,
        ids: list[str] | None = None,
        where: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> FaceRows:
        """Faces by ids and/or a Chroma `where` filter (e.g. {"batch_id": 3})."""
        return self._rows(FACES, ids, where, limit)

    def update_faces(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Change only the given keys (e.g. person, cluster); a None value removes the key."""
        self._update(FACES, ids, metadatas)

    def delete_faces(self, ids: list[str]) -> None:
        self._delete(FACES, ids)

    def count_faces(self) -> int:
        return self._count(FACES)

    def query_faces(
        self, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[Hit]:
        return self._query(FACES, embedding, k, where)[0]
