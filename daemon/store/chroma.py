"""The vector store: two ChromaDB collections, `images` and `faces`.

Embedded (`chromadb.PersistentClient` on `config.chroma_path`) by default, or a
Chroma server when `store.url` is set. Both collections use cosine space with
the HNSW settings from `config.store`, passed as the chromadb 1.x collection
`configuration` (the legacy `hnsw:*` metadata keys are not used). Each
collection's metadata records the `model` and `dim` that made its vectors, so
vectors of two models never share a collection: opening with another model
raises ModelMismatch unless the collection is still empty.

Record ids are content-derived (image SHA-256, `<sha256>:<n>` for faces), so
every write is an idempotent upsert. Metadata is made Chroma-legal on the way
in: None and non-finite floats are dropped, lists/tuples/dicts are stored as
JSON strings (and are returned as those strings). Upserts merge into an
existing record's metadata: keys not given keep their old values.
"""

from __future__ import annotations

import errno
import json
import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from daemon.errors import (
    ConfigError,
    DiskFull,
    InvalidState,
    ModelMismatch,
    StoreUnavailable,
)
from daemon.redact import redact, redact_url

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

    from daemon.config import Config

log = logging.getLogger(__name__)

IMAGES = "images"
FACES = "faces"
# Which config section chooses the model behind each collection (for hints).
_MODEL_KEYS = {
    IMAGES: "clip.model/clip.pretrained",
    FACES: "the faces model (faces.model_pack, faces.model_dir)",
}

Metadata = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, 1.0 = same direction
    metadata: dict[str, Any]


@dataclass(frozen=True)
class FaceRows:
    ids: list[str]
    embeddings: np.ndarray  # float32, shape (len(ids), dim)
    metadatas: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.ids)


def clean_metadata(metadata: dict[str, Any]) -> Metadata:
    """Chroma accepts only str/int/float/bool values; make anything else fit or drop it."""
    out: Metadata = {}
    for key, value in metadata.items():
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            # Chroma silently discards a whole metadata dict holding NaN.
            continue
        if isinstance(value, str | int | float | bool):
            out[key] = value
        elif isinstance(value, list | tuple | dict):
            out[key] = json.dumps(value)
        elif isinstance(value, Path):
            out[key] = str(value)
        else:
            raise TypeError(f"metadata {key!r}: cannot store a {type(value).__name__}")
    return out


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    shown = redact_url(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"store.url {shown!r} is not an http(s) URL",
            hint="Write it as http://HOST:PORT (for example http://127.0.0.1:8000).",
        )
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"store.url {shown!r} has a path ({parts.path}); Chroma serves at the root",
            hint="Write it as http://HOST:PORT without a path.",
        )
    ssl = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if ssl else 8000), ssl


def _auth_headers(cfg: Any) -> dict[str, str] | None:
    """The header carrying store.token, as Chroma's token authentication reads it."""
    if cfg.token is None:
        return None
    token = cfg.token.get_secret_value()
    if cfg.token_header == "Authorization":
        return {"Authorization": f"Bearer {token}"}
    return {"X-Chroma-Token": token}


class Store:
    """One connection to Chroma; call open_images/open_faces before writing."""

    def __init__(self, config: Config) -> None:
        import chromadb
        from chromadb.config import Settings

        self._cfg = config.store
        self._path = config.chroma_path
        # Shown in errors, the log and doctor: never with a password in it.
        self.where = redact_url(self._cfg.url) if self._cfg.url else str(self._path)
        settings = Settings(anonymized_telemetry=False)
        with self._guard("connect to"):
            if self._cfg.url:
                host, port, ssl = _parse_url(self._cfg.url)
                try:
                    self._client: ClientAPI = chromadb.HttpClient(
                        host=host,
                        port=port,
                        ssl=ssl,
                        headers=_auth_headers(self._cfg),
                        settings=settings,
                    )
                except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
                    refused = any(w in str(exc) for w in ("Unauthorized", "Forbidden"))
                    raise StoreUnavailable(
                        # Shown in errors, the log and doctor: never with a password in it.
                        f"cannot reach the Chroma server at {self.where}: {exc}",
                        hint="Check store.token (and store.token_header): the server refused it."
                        if refused
                        else None,
                    ) from exc
            else:
                self._path.mkdir(parents=True, exist_ok=True)
                self._client = chromadb.PersistentClient(path=str(self._path), settings=settings)
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
    def open_images(self, model: str, dim: int, *, create: bool = True) -> bool:
        """Check (and by default create) `images` for vectors of `model`; False if absent."""
        return self._open(IMAGES, model, dim, create)

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
                raise self._mismatch(name, model, dim, stored_model, stored_dim)
            if create:
                log.info("relabelling empty collection %s: %s dim %s", name, model, dim)
                with self._guard("write"):
                    col.modify(metadata={**meta, "model": model, "dim": dim})
        if create:  # a reader (search) leaves the index settings alone
            self._tune(name, col)
        self._opened.add(name)
        return True

    def _mismatch(
        self, name: str, model: str, dim: int, stored_model: Any, stored_dim: Any
    ) -> ModelMismatch:
        if self._cfg.url:
            fresh = "point store.url at another Chroma server"
        else:
            fresh = "start a new library (a new data_dir)"
        return ModelMismatch(
            f"collection '{name}' holds vectors of another model: configured {model} dim {dim}"
            f" vs stored {stored_model} dim {stored_dim}",
            hint=f"Set {_MODEL_KEYS[name]} back to {stored_model} to keep using these vectors,"
            f" or {fresh} and drop the photos into its inbox again to index them with {model}"
            " (the ledger of this library records them as done).",
        )

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
                    name,
                    key,
                    hnsw.get(key),
                    key,
                    want,
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
        self, name: str, embedding: np.ndarray, k: int, where: dict | None = None
    ) -> list[Hit]:
        col = self._lookup(name)
        if col is None or k <= 0:
            return []
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        with self._guard("query"):
            res = col.query(
                query_embeddings=vector,
                n_results=k,
                where=where or None,
                include=["metadatas", "distances"],  # type: ignore[list-item]
            )
        ids, dists = res["ids"][0], (res["distances"] or [[]])[0]
        metas = (res["metadatas"] or [[{}] * len(ids)])[0]
        hits = [
            Hit(rid, min(1.0, max(-1.0, 1.0 - float(d))), dict(m or {}))
            for rid, d, m in zip(ids, dists, metas, strict=True)
        ]
        return sorted(hits, key=lambda h: h.score, reverse=True)

    def _dim(self, name: str) -> int:
        col = self._cols.get(name)
        return int((col.metadata or {}).get("dim", 0)) if col is not None else 0

    # -- images ------------------------------------------------------------------------
    def upsert_images(
        self, ids: list[str], embeddings: np.ndarray, metadatas: list[dict[str, Any]]
    ) -> None:
        self._upsert(IMAGES, ids, embeddings, metadatas)

    def image_ids_present(self, ids: list[str]) -> set[str]:
        return self._present(IMAGES, ids)

    def count_images(self) -> int:
        return self._count(IMAGES)

    def get_images(self, ids: list[str]) -> list[dict[str, Any]]:
        """[{"id", "metadata"}] for the ids that exist, in the order asked."""
        col = self._lookup(IMAGES)
        if col is None or not ids:
            return []
        found: dict[str, dict[str, Any]] = {}
        with self._guard("read"):
            for part in self._batches(len(ids)):
                res = col.get(ids=list(ids[part]), include=["metadatas"])  # type: ignore[list-item]
                for rid, meta in zip(res["ids"], res["metadatas"] or [], strict=True):
                    found[rid] = dict(meta or {})
        return [{"id": rid, "metadata": found[rid]} for rid in dict.fromkeys(ids) if rid in found]

    def query_images(self, embedding: np.ndarray, k: int) -> list[Hit]:
        return self._query(IMAGES, embedding, k)

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
        col = self._lookup(FACES)
        dim = self._dim(FACES)
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
                    include=["embeddings", "metadatas"],  # type: ignore[list-item]
                )
                out_ids.extend(res["ids"])
                if len(res["ids"]):
                    vectors.append(np.asarray(res["embeddings"], dtype=np.float32))
                metas.extend(dict(m or {}) for m in res["metadatas"] or [])
        if limit is not None:
            out_ids, metas = out_ids[:limit], metas[:limit]
        emb = np.concatenate(vectors)[: len(out_ids)] if vectors else np.zeros((0, dim))
        return FaceRows(out_ids, emb.astype(np.float32, copy=False), metas)

    def update_faces(self, ids: list[str], metadatas: list[dict[str, Any]]) -> None:
        """Change only the given keys (e.g. person, cluster); a None value removes the key."""
        if len(ids) != len(metadatas):
            raise ValueError(f"{len(ids)} ids but {len(metadatas)} metadatas")
        col = self._lookup(FACES)
        if col is None or not ids:
            return
        metas: list[dict[str, Any]] = [
            {**clean_metadata(m), **{k: None for k, v in m.items() if v is None}} for m in metadatas
        ]
        with self._guard("write to"):
            for part in self._batches(len(ids)):
                col.update(ids=list(ids[part]), metadatas=metas[part])  # type: ignore[arg-type]

    def count_faces(self) -> int:
        return self._count(FACES)

    def query_faces(
        self, embedding: np.ndarray, k: int, where: dict[str, Any] | None = None
    ) -> list[Hit]:
        return self._query(FACES, embedding, k, where)
