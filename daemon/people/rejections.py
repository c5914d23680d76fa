"""Faces taken away from a person stay away from them, and so do copies of those faces.

`people unassign`, `people reject` and `people split` record (face, person)
in the ledger's `face_rejections`. From then on that face is never given to
that person by anything automatic or indirect: the clustering phase skips the
person when matching it (`engine.match_people`'s `banned`), naming or merging
a cluster into the person leaves it out, and a full recluster regroups only
unnamed faces into unnamed clusters, so it cannot undo a rejection either.
Only `people accept` (a person saying "yes, it is them") lifts it.

A photo often comes back as a copy: resized, re-encoded, slightly cropped.
That is a new photo with new face ids, but its face is nearly the same
vector, so a face at cosine >= `clustering.rejection_threshold` (0.9) to a
rejected one is kept from that person as well. Measured with the test face
models on the shared photos: copies (half size, JPEG quality 60, 5 % cropped,
mirrored) score 0.94-0.998 to their original; two different photos of one
person at most 0.72.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.ledger.ledger import Ledger
from daemon.people.engine import FaceSet
from daemon.people.library import fetch_vectors


@dataclass(frozen=True)
class Rejections:
    """The rejected (face, person) pairs, with the vectors of those faces the store has."""

    pairs: list[tuple[str, int]]
    people: np.ndarray  # int64, the person of each row of `vectors`
    vectors: np.ndarray  # float32 unit vectors of rejected faces
    threshold: float

    def __bool__(self) -> bool:
        return bool(self.pairs)

    @classmethod
    def load(
        cls, ledger: Ledger, store: Any, threshold: float, person_id: int | None = None
    ) -> Rejections:
        pairs = [p for p in ledger.people.rejections() if person_id in (None, p[1])]
        vectors = fetch_vectors(store, sorted({f for f, _ in pairs})) if pairs else {}
        rows = [(f, p) for f, p in pairs if f in vectors]
        if not rows:
            return cls(pairs, np.zeros(0, np.int64), np.zeros((0, 0), np.float32), threshold)
        return cls(
            pairs,
            np.asarray([p for _, p in rows], dtype=np.int64),
            np.stack([vectors[f] for f, _ in rows]).astype(np.float32),
            threshold,
        )

    def banned(self, faces: FaceSet) -> list[set[int]]:
        """Per face: the people it is rejected for, itself or as a copy of a rejected face."""
        out: list[set[int]] = [set() for _ in range(len(faces))]
        if not self.pairs or not len(faces):
            return out
        by_id: dict[str, set[int]] = {}
        for face_id, person in self.pairs:
            by_id.setdefault(face_id, set()).add(person)
        for i, face_id in enumerate(faces.ids):
            out[i] |= by_id.get(face_id, set())
        # A face model of another dimension cannot have made copies of these faces.
        if len(self.people) and self.vectors.shape[1] == faces.vectors.shape[1]:
            near = faces.vectors @ self.vectors.T >= self.threshold
            for i, j in zip(*np.nonzero(near), strict=True):
                out[int(i)].add(int(self.people[j]))
        return out


def refused(
    ledger: Ledger, store: Any, threshold: float, person_id: int, face_ids: Iterable[str]
) -> set[str]:
    """Those of the faces that must not become `person_id`'s (rejected, or copies)."""
    rejections = Rejections.load(ledger, store, threshold, person_id)
    ids = sorted(set(face_ids))
    if not rejections or not ids:
        return set()
    vectors = fetch_vectors(store, ids)
    have = [f for f in ids if f in vectors]
    dim = next(iter(vectors.values())).shape[0] if vectors else 0
    faces = FaceSet(
        have,
        have,
        np.zeros(len(have)),
        np.stack([vectors[f] for f in have]) if have else np.zeros((0, dim), np.float32),
    )
    out = {f for f in ids if f not in vectors and (f, person_id) in set(rejections.pairs)}
    return out | {
        f for f, ban in zip(have, rejections.banned(faces), strict=True) if person_id in ban
    }
