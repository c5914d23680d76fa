"""What the store hands out and takes in: search hits, rows, Chroma-legal metadata.

Chroma accepts str/int/float/bool metadata values and, since 1.x, non-empty
lists of one scalar type, which `$contains` filters on. Only the keys in
`ARRAY_KEYS` are stored as such lists; any other list, tuple or dict becomes a
JSON string (and comes back as that string), so a reader of `bbox` never gets
a type it did not write. `parse_url` reads `store.url`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np

from daemon.errors import ConfigError, ModelMismatch, StoreUnavailable
from daemon.redact import redact

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

# Image metadata: the ids of the named people in the photo (see daemon.people.photos).
ARRAY_KEYS = frozenset({"people"})

Metadata = dict[str, str | int | float | bool | list[int]]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float  # cosine similarity, 1.0 = same direction
    metadata: dict[str, Any]


@dataclass(frozen=True)
class FaceRows:
    """Records with their vectors (of either collection; the name is the faces' first use)."""

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
        if key in ARRAY_KEYS and isinstance(value, list | tuple):
            if value:  # Chroma refuses an empty list: no value is no key
                out[key] = sorted({int(v) for v in value})
        elif isinstance(value, str | int | float | bool):
            out[key] = value
        elif isinstance(value, list | tuple | dict):
            out[key] = json.dumps(value)
        elif isinstance(value, Path):
            out[key] = str(value)
        else:
            raise TypeError(f"metadata {key!r}: cannot store a {type(value).__name__}")
    return out


def parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"store.url {redact(url)!r} is not an http(s) URL",
            hint="Write it as http://HOST:PORT (for example http://127.0.0.1:8000).",
        )
    if parts.path not in ("", "/"):
        raise ConfigError(
            f"store.url {redact(url)!r} has a path ({parts.path}); Chroma serves at the root",
            hint="Write it as http://HOST:PORT without a path.",
        )
    ssl = parts.scheme == "https"
    return parts.hostname, parts.port or (443 if ssl else 8000), ssl


def connect(cfg: Any, path: Path, where: str) -> ClientAPI:
    """A Chroma client: the server at store.url (`cfg`: config.store), else the store at `path`.

    `where` names the store in errors: never with a password in it.
    """
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if not cfg.url:
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=settings)
    host, port, ssl = parse_url(cfg.url)
    try:
        return chromadb.HttpClient(
            host=host, port=port, ssl=ssl, headers=auth_headers(cfg), settings=settings
        )
    except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
        refused = any(w in str(exc) for w in ("Unauthorized", "Forbidden"))
        raise StoreUnavailable(
            f"cannot reach the Chroma server at {where}: {redact(str(exc))}",
            hint="Check store.token (and store.token_header): the server refused it."
            if refused
            else None,
        ) from exc


def auth_headers(cfg: Any) -> dict[str, str] | None:
    """The header carrying store.token, as Chroma's token authentication reads it."""
    if cfg.token is None:
        return None
    token = cfg.token.get_secret_value()
    if cfg.token_header == "Authorization":
        return {"Authorization": f"Bearer {token}"}
    return {"X-Chroma-Token": token}


def mismatch(
    name: str, model: str, dim: int, remote: bool, stored_model: Any, stored_dim: Any
) -> ModelMismatch:
    """The error for a collection that holds another model's vectors, with what to do."""
    what = f"collection '{name}' holds vectors of another model: configured {model} dim {dim}"
    what += f" vs stored {stored_model} dim {stored_dim}"
    if name != "faces":
        return ModelMismatch(
            what,
            hint=f"Run `imgtrain reindex` to index the library with {model} (search keeps"
            f" using {stored_model} until it is complete), or set clip.model/clip.pretrained"
            f" back to {stored_model}.",
        )
    fresh = (
        "point store.url at another Chroma server"
        if remote
        else "start a new library (a new data_dir)"
    )
    return ModelMismatch(
        what,
        hint=f"Set the faces model (faces.model_pack, faces.model_dir) back to {stored_model}"
        " to keep using these vectors,"
        f" or {fresh} and drop the photos into its inbox again to index them with {model}"
        " (the ledger of this library records them as done).",
    )
