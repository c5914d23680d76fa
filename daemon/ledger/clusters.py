"""The clusters table: groups of faces that look like one person, named or not.

Reached as `ledger.clusters`. A cluster keeps its id while it grows; its
centroid (float32 bytes, see `daemon.ledger.rows.blob`) is what new faces are
compared with. A named cluster has a `person_id`. The maths that computes
centroids lives in `daemon.people.engine`; this table only stores them.
Every write joins the caller's transaction when there is one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.ledger.db import Database
from daemon.ledger.rows import blob, unblob


@dataclass(frozen=True)
class ClusterRow:
    cluster_id: int
    faces: int  # faces placed in it now
    representative: str | None  # face_id of its best face
    person_id: int | None
    person: str | None  # the person's name, when named
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Centroid:
    """An unnamed cluster as the clustering phase matches against it."""

    cluster_id: int
    centroid: np.ndarray
    size: int
    representative: str | None
    rep_det_score: float | None  # the representative face's, to rank a new candidate
    rep_area: float | None


class Clusters:
    """Read, write and name clusters."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading ---------------------------------------------------------------
    def get(self, cluster_id: int) -> ClusterRow | None:
        rows = self.db.query(
            "SELECT c.*, p.name, (SELECT COUNT(*) FROM faces WHERE cluster_id=c.cluster_id) n"
            " FROM clusters c LEFT JOIN people p USING(person_id) WHERE c.cluster_id=?",
            (cluster_id,),
        )
        if not rows:
            return None
        r = rows[0]
        return ClusterRow(
            r["cluster_id"],
            r["n"],
            r["representative"],
            r["person_id"],
            r["name"],
            r["created_at"],
            r["updated_at"],
        )

    def ids(self, *, unnamed_only: bool = False) -> list[int]:
        where = " WHERE person_id IS NULL" if unnamed_only else ""
        return [int(r[0]) for r in self.db.query(f"SELECT cluster_id FROM clusters{where}")]

    def of_person(self, person_id: int) -> list[int]:
        return [
            int(r[0])
            for r in self.db.query(
                "SELECT cluster_id FROM clusters WHERE person_id=? ORDER BY cluster_id",
                (person_id,),
            )
        ]

    def unnamed_centroids(self) -> list[Centroid]:
        """Every unnamed cluster with its centroid and its representative's detection."""
        return [
            Centroid(
                r["cluster_id"],
                unblob(r["centroid"]),
                r["size"],
                r["representative"],
                r["det_score"],
                r["area"],
            )
            for r in self.db.query(
                "SELECT c.cluster_id, c.centroid, c.size, c.representative, f.det_score, f.area"
                " FROM clusters c LEFT JOIN faces f ON f.face_id = c.representative"
                " WHERE c.person_id IS NULL ORDER BY c.cluster_id"
            )
        ]

    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever a cluster is added, grows, shrinks, is named or removed."""
        row = self.db.query(
            "SELECT COUNT(*), TOTAL(size), MAX(updated_at), TOTAL(COALESCE(person_id, 0))"
            " FROM clusters"
        )[0]
        return tuple(row)

    # -- writing ---------------------------------------------------------------
    def insert(
        self, centroid: np.ndarray, size: int, representative: str | None, now: float
    ) -> int:
        with self.db.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO clusters(centroid, size, representative, created_at, updated_at)"
                " VALUES (?,?,?,?,?)",
                (blob(centroid), size, representative, now, now),
            )
            return int(cur.lastrowid)

    def update(
        self,
        cluster_id: int,
        centroid: np.ndarray,
        size: int,
        representative: str | None,
        now: float,
    ) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE clusters SET centroid=?, size=?, representative=?, updated_at=?"
                " WHERE cluster_id=?",
                (blob(centroid), size, representative, now, cluster_id),
            )

    def delete(self, cluster_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute("DELETE FROM clusters WHERE cluster_id=?", (cluster_id,))

    def delete_if_empty(self, cluster_ids: Iterable[int]) -> None:
        """Remove those of the clusters that are unnamed and hold no face."""
        with self.db.transaction() as conn:
            conn.executemany(
                "DELETE FROM clusters WHERE cluster_id=? AND person_id IS NULL AND NOT EXISTS"
                " (SELECT 1 FROM faces WHERE faces.cluster_id = clusters.cluster_id)",
                [(c,) for c in cluster_ids],
            )

    def set_person(self, cluster_id: int, person_id: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE clusters SET person_id=? WHERE cluster_id=?", (person_id, cluster_id)
            )

    def move_person(self, gone: int, keep: int) -> None:
        """`gone`'s clusters become `keep`'s."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE clusters SET person_id=? WHERE person_id=?", (keep, gone))
