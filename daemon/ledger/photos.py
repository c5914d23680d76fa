"""Photos as the person filter and the duplicate finder see them.

Reached as `ledger.photos`. Who is in a photo is read from the faces table
(a face id is "<image sha256>:<n>", so a photo's faces are a primary-key
range); `daemon.people.photos` mirrors it into each image's Chroma metadata.
A copy is a file whose content (sha256) the library already held when it
was claimed: recorded with `duplicate_of`, never computed again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from daemon.ledger.db import Database

CHUNK = 5000  # photos per statement


@dataclass(frozen=True)
class Copy:
    """One file of a photo the library holds more than once."""

    image_id: int
    sha256: str
    batch_id: int
    path: str | None  # the file in its batch folder
    first: bool  # the copy that was indexed (the others are `duplicate_of` it)


class Photos:
    """Who is in which photo; photos held twice."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def people_in(self, photos: Iterable[str]) -> dict[str, list[int]]:
        """{sha256: ids of the named people with a face in it}, [] for nobody, per photo asked."""
        out: dict[str, set[int]] = {}
        wanted = sorted(set(photos))
        for start in range(0, len(wanted), CHUNK):
            chunk = wanted[start : start + CHUNK]
            out.update({sha: set() for sha in chunk})
            for r in self.db.query(
                "SELECT j.value AS sha, f.person_id FROM json_each(?) j"
                " JOIN faces f ON f.face_id > j.value || ':' AND f.face_id < j.value || ';'"
                " WHERE f.person_id IS NOT NULL",
                (json.dumps(chunk),),
            ):
                out[r["sha"]].add(int(r["person_id"]))
        return {sha: sorted(ids) for sha, ids in out.items()}

    def with_people(self) -> list[str]:
        """Every photo with a face of a named person in it."""
        return [
            r[0]
            for r in self.db.query(
                "SELECT DISTINCT sha256 FROM faces WHERE person_id IS NOT NULL ORDER BY sha256"
            )
        ]

    def count_showing(self, people: Iterable[int]) -> int:
        """How many photos show all these people (a face of each)."""
        wanted = sorted(set(people))
        return int(
            self.db.query(
                "SELECT COUNT(*) FROM (SELECT sha256 FROM faces WHERE person_id IN"
                " (SELECT value FROM json_each(?)) GROUP BY sha256"
                " HAVING COUNT(DISTINCT person_id) = ?)",
                (json.dumps(wanted), len(wanted)),
            )[0][0]
        )

    def count_in_batches(self, batches: Iterable[int]) -> int:
        """How many photos (one per content) these batches brought."""
        return int(
            self.db.query(
                "SELECT COUNT(*) FROM images WHERE duplicate_of IS NULL AND batch_id IN"
                " (SELECT value FROM json_each(?))",
                (json.dumps(sorted(set(batches))),),
            )[0][0]
        )

    def copies(self) -> list[Copy]:
        """Every file of each photo held more than once, by photo, the indexed one first."""
        rows = self.db.query(
            "SELECT i.image_id, i.sha256, i.batch_id, i.rel_path, i.duplicate_of, b.path"
            " FROM images i JOIN batches b ON b.batch_id = i.batch_id"
            " WHERE i.sha256 IN (SELECT sha256 FROM images WHERE duplicate_of IS NOT NULL)"
            " ORDER BY i.sha256, i.duplicate_of IS NOT NULL, i.image_id"
        )
        return [
            Copy(
                r["image_id"],
                r["sha256"],
                r["batch_id"],
                str(Path(r["path"]) / r["rel_path"]) if r["path"] else None,
                r["duplicate_of"] is None,
            )
            for r in rows
        ]

    # -- the one-off fill of image metadata (daemon.people.photos.backfill) -----------
    def mirror_version(self) -> int:
        rows = self.db.query("SELECT value FROM meta WHERE key='photo_mirror'")
        return int(rows[0][0]) if rows else 0

    def set_mirror_version(self, version: int) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('photo_mirror', ?)",
                (str(version),),
            )
