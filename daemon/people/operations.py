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
that person later leaves the face out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon.errors import InsufficientData, InvalidState, NotFound
from daemon.people.engine import normalise, quality
from daemon.phases.clustering import (
    ReclusterResult,
    blob,
    fetch_vectors,
    mirror_faces,
    recluster_all,
)


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


def _resolve(conn: Any, ref: str | int, follow: bool = True) -> tuple[str, int]:
    """("person", person_id) or ("cluster", cluster_id); a named cluster means its person."""
    if isinstance(ref, str):
        row = conn.execute("SELECT person_id FROM people WHERE name=?", (ref,)).fetchone()
        if row is not None:
            return "person", int(row["person_id"])
        text = ref.strip().lstrip("#")
        if not text.isdigit():
            raise NotFound(f"there is no person named {ref!r}")
        ref = int(text)
    row = conn.execute("SELECT person_id FROM clusters WHERE cluster_id=?", (ref,)).fetchone()
    if row is None:
        raise NotFound(f"there is no cluster {ref}")
    if row["person_id"] is not None and follow:
        return "person", int(row["person_id"])
    return "cluster", int(ref)


def _face_ids(conn: Any, where: str, *params: Any) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT face_id FROM faces WHERE {where}", params)]


def refresh_cluster(conn: Any, store: Any, cluster_id: int) -> None:
    """Recompute a cluster's centroid, size and representative; delete it once empty."""
    rows = conn.execute(
        "SELECT face_id, det_score, area FROM faces WHERE cluster_id=?", (cluster_id,)
    ).fetchall()
    vectors = fetch_vectors(store, [r["face_id"] for r in rows])
    if not vectors:
        conn.execute("UPDATE faces SET cluster_id=NULL WHERE cluster_id=?", (cluster_id,))
        conn.execute("DELETE FROM clusters WHERE cluster_id=?", (cluster_id,))
        return
    rep = max(rows, key=lambda r: (quality(r["det_score"], r["area"]), r["face_id"]))
    conn.execute(
        "UPDATE clusters SET centroid=?, size=?, representative=?, updated_at=? WHERE cluster_id=?",
        (
            blob(np.mean(list(vectors.values()), axis=0)),
            len(rows),
            rep["face_id"],
            time.time(),
            cluster_id,
        ),
    )


def refresh_prototype(conn: Any, store: Any, person_id: int) -> None:
    vectors = fetch_vectors(store, _face_ids(conn, "person_id=?", person_id))
    proto = blob(np.mean(list(vectors.values()), axis=0)) if vectors else None
    conn.execute("UPDATE people SET prototype=? WHERE person_id=?", (proto, person_id))


def _to_pool(conn: Any, face_ids: list[str]) -> None:
    conn.executemany(
        "UPDATE faces SET person_id=NULL, cluster_id=NULL, suggested_person_id=NULL,"
        " suggestion_score=NULL WHERE face_id=?",
        [(f,) for f in face_ids],
    )


def _join(
    conn: Any, store: Any, cluster_id: int, person_id: int | None, name: str, min_faces: int
) -> tuple[int, list[str]]:
    """Give a cluster's faces to a person (created as `name` when None); (person_id, faces)."""
    faces = conn.execute(
        "SELECT face_id, sha256 FROM faces WHERE cluster_id=?", (cluster_id,)
    ).fetchall()
    dropped: list[str] = []
    have = 0
    if person_id is not None:
        held = {
            r[0] for r in conn.execute("SELECT sha256 FROM faces WHERE person_id=?", (person_id,))
        }
        have = conn.execute(
            "SELECT COUNT(*) FROM faces WHERE person_id=?", (person_id,)
        ).fetchone()[0]
        refused = set(
            _face_ids(
                conn,
                "face_id IN (SELECT face_id FROM face_rejections WHERE person_id=?)",
                person_id,
            )
        )
        # Two faces of one photo are never one person: the person's own face stays.
        dropped = [r["face_id"] for r in faces if r["sha256"] in held or r["face_id"] in refused]
    accepted = [r["face_id"] for r in faces if r["face_id"] not in dropped]
    if have + len(accepted) < min_faces:
        raise InsufficientData(
            f"cluster {cluster_id} has {len(accepted)} usable faces and {name!r} would have"
            f" {have + len(accepted)}; a person needs at least {min_faces}"
            " (clustering.min_faces)",
            hint="Wait until more photos of them arrive, or merge this cluster with another"
            " cluster of the same person first (imgtrain people merge).",
        )
    if person_id is None:
        person_id = int(
            conn.execute(
                "INSERT INTO people(name, created_at) VALUES (?,?)", (name, time.time())
            ).lastrowid
        )
    _to_pool(conn, dropped)
    conn.executemany(
        "UPDATE faces SET person_id=?, suggested_person_id=NULL, suggestion_score=NULL"
        " WHERE face_id=?",
        [(person_id, f) for f in accepted],
    )
    conn.execute("UPDATE clusters SET person_id=? WHERE cluster_id=?", (person_id, cluster_id))
    refresh_cluster(conn, store, cluster_id)
    refresh_prototype(conn, store, person_id)
    return person_id, [r["face_id"] for r in faces]


def name_cluster(ledger: Any, store: Any, config: Any, cluster_id: int, name: str) -> Person:
    """Name a cluster; an existing name takes the cluster's faces (a merge)."""
    name = _valid_name(name)
    with ledger.transaction() as conn:
        row = conn.execute(
            "SELECT c.person_id, p.name FROM clusters c LEFT JOIN people p USING(person_id)"
            " WHERE c.cluster_id=?",
            (cluster_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"there is no cluster {cluster_id}")
        if row["person_id"] is not None:
            if row["name"] == name:
                return _person(conn, int(row["person_id"]))
            raise InvalidState(
                f"cluster {cluster_id} already belongs to {row['name']!r}",
                hint="Merge the two people (imgtrain people merge), or take single faces away"
                " (imgtrain people unassign).",
            )
        existing = conn.execute("SELECT person_id FROM people WHERE name=?", (name,)).fetchone()
        pid, changed = _join(
            conn,
            store,
            cluster_id,
            None if existing is None else int(existing["person_id"]),
            name,
            config.clustering.min_faces,
        )
        person = _person(conn, pid)
    mirror_faces(ledger, store, changed)
    return person


def merge(ledger: Any, store: Any, a: str | int, b: str | int) -> Person | ClusterInfo:
    """Merge b into a. Either may be a person or a cluster; a person always absorbs a cluster."""
    with ledger.transaction() as conn:
        ka, kb = _resolve(conn, a), _resolve(conn, b)
        if ka == kb:
            raise InvalidState(f"{a!r} and {b!r} are already the same {ka[0]}")
        if ka[0] == "cluster" and kb[0] == "person":
            ka, kb = kb, ka
        if ka[0] == "person" and kb[0] == "person":
            changed = _merge_people(conn, store, ka[1], kb[1])
        elif ka[0] == "person":
            name = conn.execute("SELECT name FROM people WHERE person_id=?", (ka[1],)).fetchone()
            changed = _join(conn, store, kb[1], ka[1], name[0], 0)[1]
        else:
            changed = _merge_clusters(conn, store, ka[1], kb[1])
        result: Person | ClusterInfo = (
            _person(conn, ka[1]) if ka[0] == "person" else _cluster(conn, ka[1])
        )
    mirror_faces(ledger, store, changed)
    return result


def _merge_people(conn: Any, store: Any, keep: int, gone: int) -> list[str]:
    held = {r[0] for r in conn.execute("SELECT sha256 FROM faces WHERE person_id=?", (keep,))}
    faces = conn.execute(
        "SELECT face_id, sha256, cluster_id FROM faces WHERE person_id=?", (gone,)
    ).fetchall()
    clash = [r for r in faces if r["sha256"] in held]
    _to_pool(conn, [r["face_id"] for r in clash])
    conn.execute("UPDATE faces SET person_id=? WHERE person_id=?", (keep, gone))
    conn.execute("UPDATE faces SET suggested_person_id=? WHERE suggested_person_id=?", (keep, gone))
    conn.execute("UPDATE clusters SET person_id=? WHERE person_id=?", (keep, gone))
    conn.execute(
        "INSERT OR IGNORE INTO face_rejections(face_id, person_id, at)"
        " SELECT face_id, ?, at FROM face_rejections WHERE person_id=?",
        (keep, gone),
    )
    conn.execute("DELETE FROM face_rejections WHERE person_id=?", (gone,))
    conn.execute("DELETE FROM people WHERE person_id=?", (gone,))
    for cid in {r["cluster_id"] for r in clash if r["cluster_id"] is not None}:
        refresh_cluster(conn, store, cid)
    refresh_prototype(conn, store, keep)
    suggested = _face_ids(conn, "suggested_person_id=?", keep)
    return [r["face_id"] for r in faces] + suggested


def _merge_clusters(conn: Any, store: Any, keep: int, gone: int) -> list[str]:
    held = {r[0] for r in conn.execute("SELECT sha256 FROM faces WHERE cluster_id=?", (keep,))}
    faces = conn.execute("SELECT face_id, sha256 FROM faces WHERE cluster_id=?", (gone,)).fetchall()
    _to_pool(conn, [r["face_id"] for r in faces if r["sha256"] in held])
    conn.execute("UPDATE faces SET cluster_id=? WHERE cluster_id=?", (keep, gone))
    conn.execute("DELETE FROM clusters WHERE cluster_id=?", (gone,))
    refresh_cluster(conn, store, keep)
    return [r["face_id"] for r in faces]


def unassign_face(ledger: Any, store: Any, face_id: str) -> FaceRef:
    """Send a face back to the unknown pool; it is never given to that person again by itself."""
    with ledger.transaction() as conn:
        row = conn.execute(
            "SELECT person_id, cluster_id, clustered FROM faces WHERE face_id=?", (face_id,)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"there is no face {face_id!r}",
                hint="Face ids are listed by `imgtrain people show NAME`.",
            )
        if not row["clustered"]:
            raise InvalidState(
                f"face {face_id} has not been clustered yet",
                hint="Wait until its batch has finished, then try again.",
            )
        _to_pool(conn, [face_id])
        if row["person_id"] is not None:
            conn.execute(
                "INSERT OR IGNORE INTO face_rejections(face_id, person_id, at) VALUES (?,?,?)",
                (face_id, row["person_id"], time.time()),
            )
            refresh_prototype(conn, store, row["person_id"])
        if row["cluster_id"] is not None:
            refresh_cluster(conn, store, row["cluster_id"])
        ref = _faces(conn, "f.face_id=?", face_id)[0]
    mirror_faces(ledger, store, [face_id])
    return ref


def recluster(ledger: Any, store: Any, config: Any) -> ReclusterResult:
    """A full recluster of every unnamed face (see recluster_all)."""
    return recluster_all(ledger, store, config)


# -- reading ------------------------------------------------------------------
def _path(batch_path: str | None, rel_path: str | None) -> str | None:
    return str(Path(batch_path) / rel_path) if batch_path and rel_path else None


_FACE_SQL = (
    "SELECT f.face_id, f.det_score, f.area, f.cluster_id, p.name AS person,"
    " s.name AS suggested, f.suggestion_score, b.path AS batch_path, i.rel_path"
    " FROM faces f LEFT JOIN people p ON p.person_id = f.person_id"
    " LEFT JOIN people s ON s.person_id = f.suggested_person_id"
    " LEFT JOIN images i ON i.image_id = f.image_id LEFT JOIN batches b ON b.batch_id = i.batch_id"
)


def _faces(conn: Any, where: str, *params: Any) -> list[FaceRef]:
    rows = conn.execute(f"{_FACE_SQL} WHERE {where} ORDER BY f.face_id", params).fetchall()
    rows.sort(key=lambda r: -quality(r["det_score"], r["area"]))
    return [
        FaceRef(
            r["face_id"],
            _path(r["batch_path"], r["rel_path"]),
            r["det_score"],
            r["cluster_id"],
            r["person"],
            r["suggested"],
            r["suggestion_score"],
        )
        for r in rows
    ]


def _person(conn: Any, person_id: int) -> Person:
    row = conn.execute("SELECT * FROM people WHERE person_id=?", (person_id,)).fetchone()
    if row is None:
        raise NotFound(f"there is no person {person_id}")
    faces = _faces(conn, "f.person_id=?", person_id)
    clusters = [
        r[0]
        for r in conn.execute(
            "SELECT cluster_id FROM clusters WHERE person_id=? ORDER BY cluster_id", (person_id,)
        )
    ]
    best = faces[0] if faces else None
    return Person(
        person_id,
        row["name"],
        len(faces),
        clusters,
        best.face_id if best else None,
        best.image_path if best else None,
        row["created_at"],
    )


def _cluster(conn: Any, cluster_id: int) -> ClusterInfo:
    row = conn.execute(
        "SELECT c.*, p.name, (SELECT COUNT(*) FROM faces WHERE cluster_id=c.cluster_id) n"
        " FROM clusters c LEFT JOIN people p USING(person_id) WHERE c.cluster_id=?",
        (cluster_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"there is no cluster {cluster_id}")
    rep = _faces(conn, "f.face_id=?", row["representative"]) if row["representative"] else []
    return ClusterInfo(
        cluster_id,
        row["n"],
        row["name"],
        row["representative"],
        rep[0].image_path if rep else None,
        row["created_at"],
        row["updated_at"],
    )


def list_people(ledger: Any) -> list[Person]:
    """Everyone named, most faces first."""
    ids = [r[0] for r in ledger.query("SELECT person_id FROM people")]
    people = [_person(ledger.conn, pid) for pid in ids]
    return sorted(people, key=lambda p: (-p.faces, p.name))


def list_clusters(ledger: Any, unnamed_only: bool = False) -> list[ClusterInfo]:
    """Clusters, largest first (only those without a name when `unnamed_only`)."""
    where = " WHERE person_id IS NULL" if unnamed_only else ""
    ids = [r[0] for r in ledger.query(f"SELECT cluster_id FROM clusters{where}")]
    clusters = [_cluster(ledger.conn, cid) for cid in ids]
    return sorted(clusters, key=lambda c: (-c.faces, c.cluster_id))


def show(ledger: Any, name_or_cluster: str | int) -> Detail:
    """A person (by name) or a cluster (by id) with all their faces, best first."""
    conn = ledger.conn
    kind, key = _resolve(conn, name_or_cluster, follow=False)
    if kind == "person":
        return Detail(_person(conn, key), None, _faces(conn, "f.person_id=?", key))
    return Detail(None, _cluster(conn, key), _faces(conn, "f.cluster_id=?", key))


def prototype_of(ledger: Any, name: str) -> np.ndarray | None:
    """A person's prototype as a unit vector (None when they have no faces)."""
    row = ledger.conn.execute("SELECT prototype FROM people WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"there is no person named {name!r}")
    if row["prototype"] is None:
        return None
    return normalise(np.frombuffer(row["prototype"], dtype=np.float32))
