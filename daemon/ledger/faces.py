"""The faces table: one row per detected face, and where clustering placed it.

Reached as `ledger.faces`. Face ids are "<image sha256>:<n>", so a photo's
faces are a primary-key range. The faces phase adds rows; the clustering phase
and `daemon.people` read them and move them between people, clusters and the
unknown pool (placed nowhere). The vectors live in the store, not here.

Every write joins the caller's transaction when there is one, so an operation
that reads, decides and writes (naming a cluster, a batch's clustering) stays
one transaction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.ledger.db import Database

CHUNK = 5000  # ids per statement


@dataclass(frozen=True)
class NewFace:
    """A face the faces phase found, as the ledger records it."""

    face_id: str
    det_score: float
    area: float


@dataclass(frozen=True)
class FaceRow:
    face_id: str
    sha256: str  # the photo: two faces of one photo are never one person
    det_score: float
    area: float
    cluster_id: int | None
    person_id: int | None
    clustered: bool


@dataclass(frozen=True)
class Placement:
    """Who or what already holds a face of a photo."""

    sha256: str
    cluster_id: int | None
    person_id: int | None


@dataclass(frozen=True)
class FaceLabels:
    """A face's place by name, as Chroma's metadata mirrors it."""

    face_id: str
    cluster_id: int | None
    person: str | None
    suggested_person: str | None


@dataclass(frozen=True)
class FaceDetail:
    """A face as `imgtrain people show` lists it."""

    face_id: str
    det_score: float
    area: float
    cluster_id: int | None
    person: str | None
    suggested_person: str | None
    suggestion_score: float | None
    image_path: str | None  # the photo in its batch folder


@dataclass(frozen=True)
class Assignment:
    """The clustering phase's decision for one face of a batch."""

    face_id: str
    person_id: int | None
    cluster_id: int | None
    suggested_person_id: int | None
    suggestion_score: float | None


_COLUMNS = "face_id, sha256, det_score, area, cluster_id, person_id, clustered"

_DETAIL_SQL = (
    "SELECT f.face_id, f.det_score, f.area, f.cluster_id, p.name AS person,"
    " s.name AS suggested, f.suggestion_score, b.path AS batch_path, i.rel_path"
    " FROM faces f LEFT JOIN people p ON p.person_id = f.person_id"
    " LEFT JOIN people s ON s.person_id = f.suggested_person_id"
    " LEFT JOIN images i ON i.image_id = f.image_id LEFT JOIN batches b ON b.batch_id = i.batch_id"
)


def _face(r: Any) -> FaceRow:
    return FaceRow(
        r["face_id"],
        r["sha256"],
        r["det_score"],
        r["area"],
        r["cluster_id"],
        r["person_id"],
        bool(r["clustered"]),
    )


def _detail(r: Any) -> FaceDetail:
    return FaceDetail(
        r["face_id"],
        r["det_score"],
        r["area"],
        r["cluster_id"],
        r["person"],
        r["suggested"],
        r["suggestion_score"],
        _path(r["batch_path"], r["rel_path"]),
    )


def _path(batch_path: str | None, rel_path: str | None) -> str | None:
    return str(Path(batch_path) / rel_path) if batch_path and rel_path else None


def _chunks(values: list[str]) -> Iterable[str]:
    """The values as JSON arrays of at most CHUNK, for `json_each(?)`."""
    for start in range(0, len(values), CHUNK):
        yield json.dumps(values[start : start + CHUNK])


class Faces:
    """Add, find and move faces."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- adding ----------------------------------------------------------------
    def add(self, batch_id: int, image_id: int, sha256: str, faces: Iterable[NewFace]) -> None:
        """A photo's faces; a face already recorded (a re-run) is left as it is."""
        now = time.time()
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO faces(face_id, sha256, image_id, batch_id, det_score, area,"
                " created_at) VALUES (?,?,?,?,?,?,?)",
                [
                    (f.face_id, sha256, image_id, batch_id, float(f.det_score), float(f.area), now)
                    for f in faces
                ],
            )

    # -- reading ---------------------------------------------------------------
    def get(self, face_id: str) -> FaceRow | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM faces WHERE face_id=?", (face_id,))
        return _face(rows[0]) if rows else None

    def unclustered(self, batch_id: int) -> list[FaceRow]:
        """A batch's faces the clustering phase has not placed yet, by id."""
        return [
            _face(r)
            for r in self.db.query(
                f"SELECT {_COLUMNS} FROM faces WHERE batch_id=? AND clustered=0 ORDER BY face_id",
                (batch_id,),
            )
        ]

    def of_person(self, person_id: int) -> list[FaceRow]:
        return [
            _face(r)
            for r in self.db.query(f"SELECT {_COLUMNS} FROM faces WHERE person_id=?", (person_id,))
        ]

    def of_cluster(self, cluster_id: int) -> list[FaceRow]:
        return [
            _face(r)
            for r in self.db.query(
                f"SELECT {_COLUMNS} FROM faces WHERE cluster_id=?", (cluster_id,)
            )
        ]

    def suggested_for(self, person_id: int) -> list[str]:
        """Ids of the faces that carry `person_id` as a suggestion."""
        return [
            r[0]
            for r in self.db.query(
                "SELECT face_id FROM faces WHERE suggested_person_id=?", (person_id,)
            )
        ]

    def pool(self, limit: int) -> list[FaceRow]:
        """The `limit` most recent clustered faces placed nowhere (the unknown pool)."""
        return [
            _face(r)
            for r in self.db.query(
                f"SELECT {_COLUMNS} FROM faces"
                " WHERE clustered=1 AND cluster_id IS NULL AND person_id IS NULL"
                " ORDER BY created_at DESC, face_id DESC LIMIT ?",
                (limit,),
            )
        ]

    def count_pool(self) -> int:
        """Clustered faces placed nowhere: the pool, however long."""
        return int(
            self.db.query(
                "SELECT COUNT(*) n FROM faces WHERE clustered=1 AND cluster_id IS NULL"
                " AND person_id IS NULL"
            )[0]["n"]
        )

    def count_unplaced(self) -> int:
        """Faces in no cluster and with no person, clustered yet or not."""
        return int(
            self.db.query(
                "SELECT COUNT(*) n FROM faces WHERE person_id IS NULL AND cluster_id IS NULL"
            )[0]["n"]
        )

    def unnamed(self) -> list[FaceRow]:
        """Every clustered face without a person, oldest first (a full recluster's input)."""
        return [
            _face(r)
            for r in self.db.query(
                f"SELECT {_COLUMNS} FROM faces WHERE clustered=1 AND person_id IS NULL"
                " ORDER BY created_at, face_id"
            )
        ]

    def occupancy(self, photos: Iterable[str]) -> list[Placement]:
        """Faces already placed (person or cluster) in these photos.

        One primary-key range probe per photo, whatever the library's size.
        """
        out: list[Placement] = []
        for chunk in _chunks(sorted(set(photos))):
            out += [
                Placement(r["sha256"], r["cluster_id"], r["person_id"])
                for r in self.db.query(
                    "SELECT f.sha256, f.cluster_id, f.person_id FROM json_each(?) j"
                    " JOIN faces f ON f.face_id > j.value || ':' AND f.face_id < j.value || ';'"
                    " WHERE f.cluster_id IS NOT NULL OR f.person_id IS NOT NULL",
                    (chunk,),
                )
            ]
        return out

    def labels(self, face_ids: Iterable[str]) -> list[FaceLabels]:
        """The faces' cluster, person and suggestion by name (unknown ids are left out)."""
        out: list[FaceLabels] = []
        for chunk in _chunks(sorted(set(face_ids))):
            out += [
                FaceLabels(r["face_id"], r["cluster_id"], r["person"], r["suggested"])
                for r in self.db.query(
                    "SELECT f.face_id, f.cluster_id, p.name AS person, s.name AS suggested"
                    " FROM json_each(?) j JOIN faces f ON f.face_id = j.value"
                    " LEFT JOIN people p ON p.person_id = f.person_id"
                    " LEFT JOIN people s ON s.person_id = f.suggested_person_id",
                    (chunk,),
                )
            ]
        return out

    def details(
        self,
        *,
        person_id: int | None = None,
        cluster_id: int | None = None,
        face_id: str | None = None,
    ) -> list[FaceDetail]:
        """A person's, a cluster's or one face's faces with names and photo paths, by id."""
        keys = {"f.person_id": person_id, "f.cluster_id": cluster_id, "f.face_id": face_id}
        given = [(column, value) for column, value in keys.items() if value is not None]
        if len(given) != 1:
            raise ValueError("details() takes exactly one of person_id, cluster_id, face_id")
        column, value = given[0]
        rows = self.db.query(f"{_DETAIL_SQL} WHERE {column}=? ORDER BY f.face_id", (value,))
        return [_detail(r) for r in rows]

    def suggestions(self, person_id: int | None = None) -> list[FaceDetail]:
        """Faces suggested for `person_id` (or for anyone), most similar first."""
        rows = self.db.query(
            f"{_DETAIL_SQL} WHERE f.suggested_person_id = COALESCE(?, f.suggested_person_id)"
            " ORDER BY f.suggestion_score DESC, f.face_id",
            (person_id,),
        )
        return [_detail(r) for r in rows]

    def touched_by_batch(self, batch_id: int) -> list[str]:
        """A batch's faces and the faces of every cluster changed since the batch's faces came."""
        return [
            r["face_id"]
            for r in self.db.query(
                "SELECT face_id FROM faces WHERE batch_id=?1 UNION"
                " SELECT f.face_id FROM faces f JOIN clusters c USING(cluster_id)"
                " WHERE c.updated_at >= (SELECT MIN(created_at) FROM faces WHERE batch_id=?1)",
                (batch_id,),
            )
        ]

    def matching(self, sha256_prefix: str, n: str) -> list[str]:
        """Ids ending in ":n" (n as typed) of the photos whose sha256 starts with the prefix."""
        escaped = sha256_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return [
            r["face_id"]
            for r in self.db.query(
                "SELECT face_id FROM faces WHERE face_id LIKE ? ESCAPE '\\'",
                (f"{escaped}%:{n}",),
            )
        ]

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a clustered face changes place (not a hash: a quick witness)."""
        row = self.db.query(
            "SELECT COUNT(*), TOTAL(COALESCE(cluster_id, 0)), TOTAL(COALESCE(person_id, 0))"
            " FROM faces WHERE clustered=1"
        )[0]
        return tuple(row)

    # -- placing -----------------------------------------------------------------
    def assign(self, decisions: Iterable[Assignment]) -> None:
        """Store the clustering phase's decisions and mark those faces clustered."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET person_id=?, cluster_id=?, suggested_person_id=?,"
                " suggestion_score=?, clustered=1 WHERE face_id=?",
                [
                    (
                        d.person_id,
                        d.cluster_id,
                        d.suggested_person_id,
                        d.suggestion_score,
                        d.face_id,
                    )
                    for d in decisions
                ],
            )

    def join_if_unplaced(self, moves: Mapping[str, int]) -> None:
        """{face_id: cluster_id} for pool faces, unless something placed them meanwhile."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET cluster_id=? WHERE face_id=? AND cluster_id IS NULL"
                " AND person_id IS NULL",
                [(c, f) for f, c in moves.items()],
            )

    def set_clusters(self, moves: Mapping[str, int | None]) -> None:
        """{face_id: cluster_id or None}."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET cluster_id=? WHERE face_id=?", [(c, f) for f, c in moves.items()]
            )

    def to_pool(self, face_ids: Iterable[str]) -> None:
        """Take the faces from their person, cluster and suggestion."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET person_id=NULL, cluster_id=NULL, suggested_person_id=NULL,"
                " suggestion_score=NULL WHERE face_id=?",
                [(f,) for f in face_ids],
            )

    def drop_suggestion(self, face_ids: Iterable[str]) -> None:
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET suggested_person_id=NULL, suggestion_score=NULL WHERE face_id=?",
                [(f,) for f in face_ids],
            )

    def give_to_person(self, face_ids: Iterable[str], person_id: int) -> None:
        """The faces become `person_id`'s (their suggestion goes)."""
        with self.db.transaction() as conn:
            conn.executemany(
                "UPDATE faces SET person_id=?, suggested_person_id=NULL, suggestion_score=NULL"
                " WHERE face_id=?",
                [(person_id, f) for f in face_ids],
            )

    def move_person(self, gone: int, keep: int) -> None:
        """`gone`'s faces and suggestions become `keep`'s."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE faces SET person_id=? WHERE person_id=?", (keep, gone))
            conn.execute(
                "UPDATE faces SET suggested_person_id=? WHERE suggested_person_id=?", (keep, gone)
            )

    def move_cluster(self, gone: int, keep: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE faces SET cluster_id=? WHERE cluster_id=?", (keep, gone))

    def leave_cluster(self, cluster_id: int) -> None:
        """Every face of the cluster leaves it (their person, if any, stays)."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE faces SET cluster_id=NULL WHERE cluster_id=?", (cluster_id,))
