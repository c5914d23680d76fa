"""Naming, merging and correcting people: what `imgtrain people ...` calls.

The ledger is authoritative; every call changes it in one transaction and then
mirrors the faces it touched into Chroma's metadata. A person's prototype (the
mean of their faces' vectors, which the clustering phase matches new faces
against) is recomputed from the store whenever their faces change.

References: a cluster is an int (or a string of digits, optionally "#12"); a
string is first looked up as a person's exact name. Names made only of digits
are refused so the two never collide. Named people are only ever merged here,
on request.

A face taken away from a person with `unassign_face` goes back to the unknown
pool and is recorded in `face_rejections`, so naming or merging a cluster as
that person later leaves the face out, and copies of it too
(`daemon.people.rejections`). Reviewing suggestions is `daemon.people.review`;
splitting a cluster, `daemon.people.split`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.config import ClusteringConfig
from daemon.errors import InsufficientData, InvalidState, NotFound
from daemon.ledger.faces import FaceDetail
from daemon.ledger.ledger import Ledger
from daemon.people.engine import quality
from daemon.people.library import fetch_vectors, mirror_faces
from daemon.people.rejections import refused


@dataclass(frozen=True)
class FaceRef:
    face_id: str
    image_path: str | None
    det_score: float
    cluster_id: int | None
    person: str | None
    suggested_person: str | None
    suggestion_score: float | None


@dataclass(frozen=True)
class Person:
    person_id: int
    name: str
    faces: int
    clusters: list[int]
    representative: str | None  # face_id of their best face
    image_path: str | None  # the photo holding it
    created_at: float


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: int
    faces: int
    person: str | None
    representative: str | None
    image_path: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Detail:
    person: Person | None
    cluster: ClusterInfo | None
    faces: list[FaceRef]


def _valid_name(name: str) -> str:
    name = " ".join(str(name).split())
    if not name or name.lstrip("#").isdigit():
        raise InvalidState(
            f"{name!r} cannot be a person's name",
            hint="Use a name with at least one letter; numbers refer to clusters.",
        )
    return name


def _resolve(ledger: Ledger, ref: str | int, follow: bool = True) -> tuple[str, int]:
    """("person", person_id) or ("cluster", cluster_id); a named cluster means its person."""
    if isinstance(ref, str):
        person = ledger.people.by_name(ref)
        if person is not None:
            return "person", person.person_id
        text = ref.strip().lstrip("#")
        if not text.isdigit():
            raise NotFound(f"there is no person named {ref!r}")
        ref = int(text)
    cluster = ledger.clusters.get(ref)
    if cluster is None:
        raise NotFound(f"there is no cluster {ref}")
    if cluster.person_id is not None and follow:
        return "person", cluster.person_id
    return "cluster", int(ref)


def refresh_cluster(ledger: Ledger, store: Any, cluster_id: int) -> None:
    """Recompute a cluster's centroid, size and representative; delete it once empty."""
    faces = ledger.faces.of_cluster(cluster_id)
    vectors = fetch_vectors(store, [f.face_id for f in faces])
    if not vectors:
        ledger.faces.leave_cluster(cluster_id)
        ledger.clusters.delete(cluster_id)
        return
    rep = max(faces, key=lambda f: (quality(f.det_score, f.area), f.face_id))
    ledger.clusters.update(
        cluster_id,
        np.mean(list(vectors.values()), axis=0),
        len(faces),
        rep.face_id,
        time.time(),
    )


def refresh_prototype(ledger: Ledger, store: Any, person_id: int) -> None:
    vectors = fetch_vectors(store, [f.face_id for f in ledger.faces.of_person(person_id)])
    ledger.people.set_prototype(
        person_id, np.mean(list(vectors.values()), axis=0) if vectors else None
    )


def _threshold(config: Any) -> float:
    return (config.clustering if config is not None else ClusteringConfig()).rejection_threshold


def _join(
    ledger: Ledger,
    store: Any,
    cluster_id: int,
    person_id: int | None,
    name: str,
    min_faces: int,
    threshold: float,
) -> tuple[int, list[str]]:
    """Give a cluster's faces to a person (created as `name` when None); (person_id, faces)."""
    faces = ledger.faces.of_cluster(cluster_id)
    dropped: list[str] = []
    have = 0
    if person_id is not None:
        own = ledger.faces.of_person(person_id)
        held = {f.sha256 for f in own}
        have = len(own)
        no = refused(ledger, store, threshold, person_id, [f.face_id for f in faces])
        # Two faces of one photo are never one person: the person's own face stays.
        dropped = [f.face_id for f in faces if f.sha256 in held or f.face_id in no]
    accepted = [f.face_id for f in faces if f.face_id not in dropped]
    if have + len(accepted) < min_faces:
        raise InsufficientData(
            f"cluster {cluster_id} has {len(accepted)} usable faces and {name!r} would have"
            f" {have + len(accepted)}; a person needs at least {min_faces}"
            " (clustering.min_faces)",
            hint="Wait until more photos of them arrive, or merge this cluster with another"
            " cluster of the same person first (imgtrain people merge).",
        )
    if person_id is None:
        person_id = ledger.people.create(name)
    ledger.faces.to_pool(dropped)
    ledger.faces.give_to_person(accepted, person_id)
    ledger.clusters.set_person(cluster_id, person_id)
    refresh_cluster(ledger, store, cluster_id)
    refresh_prototype(ledger, store, person_id)
    return person_id, [f.face_id for f in faces]


def name_cluster(ledger: Ledger, store: Any, config: Any, cluster_id: int, name: str) -> Person:
    """Name a cluster; an existing name takes the cluster's faces (a merge)."""
    name = _valid_name(name)
    with ledger.transaction():
        cluster = ledger.clusters.get(cluster_id)
        if cluster is None:
            raise NotFound(f"there is no cluster {cluster_id}")
        if cluster.person_id is not None:
            if cluster.person == name:
                return _person(ledger, cluster.person_id)
            raise InvalidState(
                f"cluster {cluster_id} already belongs to {cluster.person!r}",
                hint="Merge the two people (imgtrain people merge), or take single faces away"
                " (imgtrain people unassign).",
            )
        existing = ledger.people.by_name(name)
        pid, changed = _join(
            ledger,
            store,
            cluster_id,
            None if existing is None else existing.person_id,
            name,
            config.clustering.min_faces,
            config.clustering.rejection_threshold,
        )
        person = _person(ledger, pid)
    mirror_faces(ledger, store, changed)
    return person


def merge(
    ledger: Ledger, store: Any, a: str | int, b: str | int, config: Any = None
) -> Person | ClusterInfo:
    """Merge b into a. Either may be a person or a cluster; a person always absorbs a cluster.

    Faces rejected for the person (and copies of them) stay out (`daemon.people.rejections`).
    """
    threshold = _threshold(config)
    with ledger.transaction():
        ka, kb = _resolve(ledger, a), _resolve(ledger, b)
        if ka == kb:
            raise InvalidState(f"{a!r} and {b!r} are already the same {ka[0]}")
        if ka[0] == "cluster" and kb[0] == "person":
            ka, kb = kb, ka
        if ka[0] == "person" and kb[0] == "person":
            changed = _merge_people(ledger, store, ka[1], kb[1], threshold)
        elif ka[0] == "person":
            owner = ledger.people.get(ka[1])
            assert owner is not None  # _resolve found them in this transaction
            changed = _join(ledger, store, kb[1], ka[1], owner.name, 0, threshold)[1]
        else:
            changed = _merge_clusters(ledger, store, ka[1], kb[1])
        result: Person | ClusterInfo = (
            _person(ledger, ka[1]) if ka[0] == "person" else _cluster(ledger, ka[1])
        )
    mirror_faces(ledger, store, changed)
    return result


def _merge_people(ledger: Ledger, store: Any, keep: int, gone: int, threshold: float) -> list[str]:
    kept = ledger.faces.of_person(keep)
    held = {f.sha256 for f in kept}
    faces = ledger.faces.of_person(gone)
    # A face either of them was rejected for is not the merged person's either.
    no = refused(ledger, store, threshold, keep, [f.face_id for f in faces])
    no |= refused(ledger, store, threshold, gone, [f.face_id for f in kept])
    clash = [f for f in faces if f.sha256 in held or f.face_id in no]
    clash += [f for f in kept if f.face_id in no]
    ledger.faces.to_pool([f.face_id for f in clash])
    ledger.faces.move_person(gone, keep)
    ledger.clusters.move_person(gone, keep)
    ledger.people.remove(gone, into=keep)
    for cid in {f.cluster_id for f in clash if f.cluster_id is not None}:
        refresh_cluster(ledger, store, cid)
    refresh_prototype(ledger, store, keep)
    return [f.face_id for f in [*faces, *clash]] + ledger.faces.suggested_for(keep)


def _merge_clusters(ledger: Ledger, store: Any, keep: int, gone: int) -> list[str]:
    held = {f.sha256 for f in ledger.faces.of_cluster(keep)}
    faces = ledger.faces.of_cluster(gone)
    ledger.faces.to_pool([f.face_id for f in faces if f.sha256 in held])
    ledger.faces.move_cluster(gone, keep)
    ledger.clusters.delete(gone)
    refresh_cluster(ledger, store, keep)
    return [f.face_id for f in faces]


def unassign_face(ledger: Ledger, store: Any, face_id: str) -> FaceRef:
    """Send a face back to the unknown pool; it is never given to that person again by itself."""
    with ledger.transaction():
        face = ledger.faces.get(face_id)
        if face is None:
            raise NotFound(
                f"there is no face {face_id!r}",
                hint="Face ids are listed by `imgtrain people show NAME`.",
            )
        if not face.clustered:
            raise InvalidState(
                f"face {face_id} has not been clustered yet",
                hint="Wait until its batch has finished, then try again.",
            )
        ledger.faces.to_pool([face_id])
        if face.person_id is not None:
            ledger.people.reject(face_id, face.person_id)
            refresh_prototype(ledger, store, face.person_id)
        if face.cluster_id is not None:
            refresh_cluster(ledger, store, face.cluster_id)
        ref = face_refs(ledger.faces.details(face_id=face_id))[0]
    mirror_faces(ledger, store, [face_id])
    return ref


# -- reading ------------------------------------------------------------------
def face_refs(details: list[FaceDetail]) -> list[FaceRef]:
    """Best first (stable, so equal faces stay in id order)."""
    details = sorted(details, key=lambda r: -quality(r.det_score, r.area))
    return [
        FaceRef(
            r.face_id,
            r.image_path,
            r.det_score,
            r.cluster_id,
            r.person,
            r.suggested_person,
            r.suggestion_score,
        )
        for r in details
    ]


def _person(ledger: Ledger, person_id: int) -> Person:
    row = ledger.people.get(person_id)
    if row is None:
        raise NotFound(f"there is no person {person_id}")
    faces = face_refs(ledger.faces.details(person_id=person_id))
    best = faces[0] if faces else None
    return Person(
        person_id,
        row.name,
        len(faces),
        ledger.clusters.of_person(person_id),
        best.face_id if best else None,
        best.image_path if best else None,
        row.created_at,
    )


def _cluster(ledger: Ledger, cluster_id: int) -> ClusterInfo:
    c = ledger.clusters.get(cluster_id)
    if c is None:
        raise NotFound(f"there is no cluster {cluster_id}")
    rep = face_refs(ledger.faces.details(face_id=c.representative)) if c.representative else []
    return ClusterInfo(
        cluster_id,
        c.faces,
        c.person,
        c.representative,
        rep[0].image_path if rep else None,
        c.created_at,
        c.updated_at,
    )


def list_people(ledger: Ledger) -> list[Person]:
    """Everyone named, most faces first."""
    people = [_person(ledger, pid) for pid in ledger.people.ids()]
    return sorted(people, key=lambda p: (-p.faces, p.name))


def list_clusters(ledger: Ledger, unnamed_only: bool = False) -> list[ClusterInfo]:
    """Clusters, largest first (only those without a name when `unnamed_only`)."""
    clusters = [_cluster(ledger, cid) for cid in ledger.clusters.ids(unnamed_only=unnamed_only)]
    return sorted(clusters, key=lambda c: (-c.faces, c.cluster_id))


def show(ledger: Ledger, name_or_cluster: str | int) -> Detail:
    """A person (by name) or a cluster (by id) with all their faces, best first."""
    kind, key = _resolve(ledger, name_or_cluster, follow=False)
    if kind == "person":
        return Detail(_person(ledger, key), None, face_refs(ledger.faces.details(person_id=key)))
    return Detail(None, _cluster(ledger, key), face_refs(ledger.faces.details(cluster_id=key)))
