"""The people table and the faces taken away from them (face_rejections).

Reached as `ledger.people`. A person has a unique name and a prototype: the
mean of their faces' vectors (float32 bytes), which the clustering phase
matches new faces against; `daemon.people` computes it, this table stores it.
A face the user took away from a person is recorded as rejected, so it is
never given back to them automatically. Every write joins the caller's
transaction when there is one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from daemon.ledger.db import Database
from daemon.ledger.rows import blob, unblob


@dataclass(frozen=True)
class PersonRow:
    person_id: int
    name: str
    created_at: float


@dataclass(frozen=True)
class Prototype:
    person_id: int
    vector: np.ndarray  # as stored: the mean of their faces' unit vectors
    faces: int


class People:
    """Create, find, merge and correct people."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------
    def get(self, person_id: int) -> PersonRow | None:
        rows = self.db.query(
            "SELECT person_id, name, created_at FROM people WHERE person_id=?", (person_id,)
        )
        return PersonRow(*rows[0]) if rows else None

    def by_name(self, name: str) -> PersonRow | None:
        rows = self.db.query("SELECT person_id, name, created_at FROM people WHERE name=?", (name,))
        return PersonRow(*rows[0]) if rows else None

    def ids(self) -> list[int]:
        return [int(r[0]) for r in self.db.query("SELECT person_id FROM people")]

    def prototypes(self) -> list[Prototype]:
        """Everyone with a prototype, with how many faces they have."""
        return [
            Prototype(r["person_id"], unblob(r["prototype"]), r["n"])
            for r in self.db.query(
                "SELECT p.person_id, p.prototype, COUNT(f.face_id) n FROM people p"
                " LEFT JOIN faces f ON f.person_id = p.person_id"
                " WHERE p.prototype IS NOT NULL GROUP BY p.person_id ORDER BY p.person_id"
            )
        ]

    def rejected(self, person_id: int) -> set[str]:
        """Ids of the faces taken away from this person."""
        return {
            r[0]
            for r in self.db.query(
                "SELECT face_id FROM face_rejections WHERE person_id=?", (person_id,)
            )
        }

    def rejections(self) -> list[tuple[str, int]]:
        """Every (face_id, person_id) taken away, oldest first."""
        return [
            (r[0], int(r[1]))
            for r in self.db.query(
                "SELECT face_id, person_id FROM face_rejections ORDER BY at, face_id"
            )
        ]

    # -- writing ---------------------------------------------------------------
    def create(self, name: str) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO people(name, created_at) VALUES (?,?)", (name, time.time())
            )
            return int(cur.lastrowid)

    def set_prototype(self, person_id: int, vector: np.ndarray | None) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE people SET prototype=? WHERE person_id=?",
                (None if vector is None else blob(vector), person_id),
            )

    def reject(self, face_id: str, person_id: int) -> None:
        """The face is never given to this person again by itself."""
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO face_rejections(face_id, person_id, at) VALUES (?,?,?)",
                (face_id, person_id, time.time()),
            )

    def unreject(self, face_id: str, person_id: int) -> None:
        """The user gave the face to this person after all."""
        with self.db.transaction() as conn:
            conn.execute(
                "DELETE FROM face_rejections WHERE face_id=? AND person_id=?", (face_id, person_id)
            )

    def remove(self, gone: int, *, into: int) -> None:
        """Delete `gone`, whose rejections become `into`'s.

        Their faces and clusters must have moved first (`ledger.faces.move_person`,
        `ledger.clusters.move_person`).
        """
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO face_rejections(face_id, person_id, at)"
                " SELECT face_id, ?, at FROM face_rejections WHERE person_id=?",
                (into, gone),
            )
            conn.execute("DELETE FROM face_rejections WHERE person_id=?", (gone,))
            conn.execute("DELETE FROM people WHERE person_id=?", (gone,))
