"""Reviewing the clustering phase's suggestions: `imgtrain people suggestions`, `accept`, `reject`.

A face whose similarity to a named person's prototype lies between
`suggest_threshold` and `assign_threshold` is not given to them but carries
a suggestion. A person looks (`suggestions`, with a contact sheet) and decides:

* accept: the face becomes the suggested person's. It leaves its unnamed
  cluster, the person's prototype is recomputed, and a rejection of that
  face for them is lifted (someone said it is them). A face of a photo that
  already gives the person a face is skipped: one photo, one face per person.
* reject: the face is recorded as not that person (`face_rejections`, see
  `daemon.people.rejections`) and the suggestion goes; the face stays in its
  cluster or the pool. Rejecting a face already assigned to a person is
  `unassign`: it goes back to the pool, rejected for them.

Each call is one ledger transaction; the faces changed are then mirrored into
Chroma (faces and their photos' people).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.errors import InvalidState, NotFound
from daemon.ledger.faces import FaceRow
from daemon.ledger.ledger import Ledger
from daemon.people.library import mirror_faces
from daemon.people.operations import FaceRef, refresh_cluster, refresh_prototype


@dataclass(frozen=True)
class Decision:
    face_id: str
    person: str  # accepted as, or rejected for
    done: bool
    reason: str | None = None  # why it was skipped


def _person_id(ledger: Ledger, name: str) -> int:
    row = ledger.people.by_name(name)
    if row is None:
        raise NotFound(
            f"there is no person named {name!r}",
            hint="Named people are listed by `imgtrain people`.",
        )
    return row.person_id


def suggestions(ledger: Ledger, name: str | None = None) -> list[FaceRef]:
    """Faces suggested for `name` (or for anyone), most similar first."""
    person_id = None if name is None else _person_id(ledger, name)
    return [
        FaceRef(
            d.face_id,
            d.image_path,
            d.det_score,
            d.cluster_id,
            d.person,
            d.suggested_person,
            d.suggestion_score,
        )
        for d in ledger.faces.suggestions(person_id)
    ]


def _face(ledger: Ledger, face_id: str) -> FaceRow:
    face = ledger.faces.get(face_id)
    if face is None:
        raise NotFound(
            f"there is no face {face_id!r}",
            hint="Suggested faces are listed by `imgtrain people suggestions`.",
        )
    return face


def _suggested(ledger: Ledger, face_id: str) -> tuple[int, str] | None:
    (detail,) = ledger.faces.details(face_id=face_id)
    if detail.suggested_person is None:
        return None
    return _person_id(ledger, detail.suggested_person), detail.suggested_person


def accept(ledger: Ledger, store: Any, face_ids: list[str]) -> list[Decision]:
    """Give each face to the person suggested for it."""
    out: list[Decision] = []
    changed: list[str] = []
    with ledger.transaction():
        faces = [_face(ledger, f) for f in dict.fromkeys(face_ids)]
        targets = [_suggested(ledger, f.face_id) for f in faces]
        lacking = [f.face_id for f, t in zip(faces, targets, strict=True) if t is None]
        if lacking:
            raise InvalidState(
                f"face {lacking[0]} carries no suggestion"
                + (f" (nor do {len(lacking) - 1} more)" if len(lacking) > 1 else ""),
                hint="`imgtrain people suggestions` lists the faces that carry one.",
            )
        touched_people: set[int] = set()
        touched_clusters: set[int] = set()
        for face, target in zip(faces, targets, strict=True):
            assert target is not None
            person_id, name = target
            held = {f.sha256 for f in ledger.faces.of_person(person_id)}
            if face.sha256 in held:
                out.append(
                    Decision(face.face_id, name, False, f"{name} already has a face in this photo")
                )
                continue
            if face.cluster_id is not None:
                ledger.faces.set_clusters({face.face_id: None})
                touched_clusters.add(face.cluster_id)
            ledger.faces.give_to_person([face.face_id], person_id)
            ledger.people.unreject(face.face_id, person_id)
            touched_people.add(person_id)
            changed.append(face.face_id)
            out.append(Decision(face.face_id, name, True))
        for cid in touched_clusters:
            refresh_cluster(ledger, store, cid)
        for pid in touched_people:
            refresh_prototype(ledger, store, pid)
    mirror_faces(ledger, store, changed)
    return out


def reject(ledger: Ledger, store: Any, face_ids: list[str]) -> list[Decision]:
    """Each face is not the person suggested for it (or assigned to it)."""
    out: list[Decision] = []
    with ledger.transaction():
        faces = [_face(ledger, f) for f in dict.fromkeys(face_ids)]
        touched_people: set[int] = set()
        touched_clusters: set[int] = set()
        for face in faces:
            if face.person_id is not None:  # assigned: as `unassign`
                row = ledger.people.get(face.person_id)
                ledger.faces.to_pool([face.face_id])
                ledger.people.reject(face.face_id, face.person_id)
                touched_people.add(face.person_id)
                if face.cluster_id is not None:
                    touched_clusters.add(face.cluster_id)
                out.append(Decision(face.face_id, row.name if row else "?", True))
                continue
            target = _suggested(ledger, face.face_id)
            if target is None:
                raise InvalidState(
                    f"face {face.face_id} has no person and no suggestion: nothing to reject",
                    hint="`imgtrain people suggestions` lists the faces that carry one.",
                )
            ledger.people.reject(face.face_id, target[0])
            ledger.faces.drop_suggestion([face.face_id])
            out.append(Decision(face.face_id, target[1], True))
        for cid in touched_clusters:
            refresh_cluster(ledger, store, cid)
        for pid in touched_people:
            refresh_prototype(ledger, store, pid)
    mirror_faces(ledger, store, [d.face_id for d in out])
    return out


def accept_all(ledger: Ledger, store: Any, name: str) -> list[Decision]:
    """Accept every suggestion for `name`."""
    return accept(ledger, store, [f.face_id for f in suggestions(ledger, name)])


def reject_all(ledger: Ledger, store: Any, name: str) -> list[Decision]:
    """Reject every suggestion for `name` (the faces already theirs stay)."""
    return reject(ledger, store, [f.face_id for f in suggestions(ledger, name)])
