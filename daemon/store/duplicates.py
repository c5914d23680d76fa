"""Near-duplicate photos: what `imgtrain duplicates` finds. Nothing is ever deleted.

Two photos are copies of one when the cosine similarity of their CLIP vectors
is at least `duplicates.threshold` (0.98 by default): a resized, re-encoded
or slightly cropped copy keeps nearly the same vector. Every image asks the
HNSW index for its NEIGHBOURS nearest images (many per call), the pairs at or
above the threshold are joined with union-find, so a chain of copies is one
group. The cost grows with the library like one search per photo.

A file dropped again byte for byte (same sha256) is one record in Chroma and
is not indexed again; the ledger keeps its other paths (`ledger.photos.copies`),
which join the group as exact copies.

In each group the best copy is marked: the largest resolution (width x height,
as the embedding phase stored it), then the earliest capture time, then the
largest file (the least compressed), then the first indexed (lowest batch
id, then path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from daemon.ledger.ledger import Ledger
from daemon.store.chroma import IMAGES

NEIGHBOURS = 10  # a group grows through chains of these, so a big group is still found whole
PAGE = 2000  # images read and queried at a time: memory stays flat


@dataclass(frozen=True)
class Member:
    """One file in a group."""

    image_id: str  # sha256 of the file
    path: str
    batch_id: int | None
    width: int | None
    height: int | None
    captured_at: str | None
    bytes: int | None  # the file's size now (None: it is gone)
    similarity: float  # to the most similar other photo of the group (1.0: the same file)
    exact: bool  # another file of the group has the same content
    best: bool


@dataclass(frozen=True)
class Group:
    members: list[Member]  # the best copy first

    @property
    def best(self) -> Member:
        return self.members[0]


class _Sets:
    """Union-find over image ids."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _rank(m: Member, ts: float | None) -> tuple[Any, ...]:
    pixels = (m.width or 0) * (m.height or 0)
    early = ts if ts is not None else math.inf
    return (-pixels, early, -(m.bytes or 0), m.batch_id or 0, m.path)


def _size(path: str) -> int | None:
    try:
        return Path(path).stat().st_size
    except OSError:
        return None


def find_duplicates(
    store: Any, ledger: Ledger, threshold: float, collection: str = IMAGES
) -> tuple[int, list[Group]]:
    """(images looked at, groups of copies with the best first), largest groups first.

    `collection`: the image collection whose vectors are compared (the active model's).
    """
    sets = _Sets()
    near: dict[str, float] = {}  # image id -> its highest similarity to another image
    meta: dict[str, dict[str, Any]] = {}
    seen = 0
    while True:
        rows = store.image_rows(offset=seen, limit=PAGE, name=collection)
        if not len(rows):
            break
        seen += len(rows)
        found = store.neighbours_images(rows.embeddings, NEIGHBOURS, name=collection)
        for rid, own, hits in zip(rows.ids, rows.metadatas, found, strict=True):
            for hit in hits:
                if hit.id == rid or hit.score < threshold:
                    continue
                sets.join(rid, hit.id)
                meta.setdefault(rid, own)
                meta.setdefault(hit.id, hit.metadata)
                for key in (rid, hit.id):
                    near[key] = max(near.get(key, -1.0), hit.score)
    files: dict[str, list[tuple[str, int | None]]] = {}  # sha -> other files (path, batch)
    for copy in ledger.photos.copies():
        sets.find(copy.sha256)
        if not copy.first and copy.path is not None:
            files.setdefault(copy.sha256, []).append((copy.path, copy.batch_id))
    if files:  # exact copies that had no near neighbour still need their metadata
        missing = [sha for sha in files if sha not in meta]
        meta.update({r["id"]: r["metadata"] for r in store.get_images(missing, name=collection)})
    members: dict[str, list[tuple[Member, float | None]]] = {}
    for sha in sets.parent:
        m = meta.get(sha)
        if m is None:  # an exact copy whose photo is not indexed (failed, or not embedded)
            continue
        extra = files.get(sha, [])
        for path, batch in [(str(m.get("path", "")), m.get("batch_id")), *extra]:
            member = Member(
                sha,
                path,
                batch if isinstance(batch, int) else None,
                m.get("width"),
                m.get("height"),
                m.get("captured_at"),
                _size(path),
                1.0 if extra else round(near.get(sha, 1.0), 4),
                bool(extra),
                False,
            )
            members.setdefault(sets.find(sha), []).append((member, m.get("captured_ts")))
    groups = []
    for files_of_group in members.values():
        if len(files_of_group) < 2:
            continue
        files_of_group.sort(key=lambda mt: _rank(*mt))
        best = files_of_group[0][0]
        groups.append(Group([replace(m, best=m is best) for m, _ in files_of_group]))
    groups.sort(key=lambda g: (-len(g.members), g.best.path))
    return seen, groups
