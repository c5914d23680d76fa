"""The ledger's side of `imgtrain queue remove`: a batch's images and faces taken back out.

Two transactions around the store's deletions (`daemon.people.removal` runs
them in order): `begin` checks the batch may go, marks it `removing` and
plans what goes; `apply` deletes its rows, and `record` keeps what went and
marks it `removed`. Interrupted in between, the batch stays `removing` and
running the command again finishes the job (every step is idempotent).

A photo another batch holds a copy of (same SHA-256: its vector and faces are
shared) stays in the library: that copy becomes the original, taking the
phase results and the faces, and only the removed batch's rows go.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import InvalidState
from daemon.ledger.ledger import Ledger
from daemon.vocab import BatchState

REMOVABLE = (BatchState.COMPLETED, BatchState.FAILED, BatchState.CANCELLED, BatchState.REMOVING)


@dataclass(frozen=True)
class Owner:
    """The copy of a photo that stays when the batch holding its original goes."""

    image_id: int
    batch_id: int
    path: str  # the photo in its batch folder
    was_duplicate: bool
    original: int  # the removed batch's image whose results it takes over


@dataclass
class Plan:
    batch_id: int
    name: str
    kind: str
    path: str | None
    image_ids: list[int] = field(default_factory=list)
    drop_vectors: list[str] = field(default_factory=list)  # image ids (sha256) nobody else holds
    owners: dict[str, Owner] = field(default_factory=dict)  # sha256 -> the copy that stays
    drop_faces: list[str] = field(default_factory=list)
    moved_faces: dict[str, str] = field(default_factory=dict)  # face_id -> sha256 (its owner's)


@dataclass(frozen=True)
class RemovalRow:
    batch_id: int
    at: float
    images: int
    faces: int
    image_vectors: int
    face_vectors: int
    shared: int
    clusters_changed: int
    clusters_removed: int
    people_changed: int
    photos_deleted: int
    path: str | None


def begin(ledger: Ledger, batch_id: int) -> Plan:
    """Check the batch may be removed, mark it `removing`, and plan what goes."""
    with ledger.transaction() as conn:
        batch = ledger.batch(batch_id)
        if batch.state not in REMOVABLE:
            raise refusal(batch_id, batch.state)
        conn.execute("UPDATE batches SET state=? WHERE batch_id=?", (BatchState.REMOVING, batch_id))
        plan = Plan(batch_id, batch.name, batch.kind, batch.path)
        images = conn.execute(
            "SELECT image_id, sha256, duplicate_of FROM images WHERE batch_id=?"
            " ORDER BY duplicate_of IS NOT NULL, image_id",
            (batch_id,),
        ).fetchall()
        plan.image_ids = [r["image_id"] for r in images]
        ours: dict[str, int] = {}
        for r in images:
            ours.setdefault(r["sha256"], r["image_id"])
        copies = conn.execute(
            "SELECT i.image_id, i.sha256, i.batch_id, i.duplicate_of, b.path || '/' || i.rel_path"
            " AS file FROM json_each(?) j JOIN images i ON i.sha256 = j.value"
            " JOIN batches b USING(batch_id) WHERE i.batch_id != ? AND b.state NOT IN (?,?)"
            " ORDER BY i.duplicate_of IS NOT NULL, i.image_id",
            (json.dumps(sorted(ours)), batch_id, BatchState.REMOVING, BatchState.REMOVED),
        ).fetchall()
        for c in copies:
            if c["sha256"] not in plan.owners:
                plan.owners[c["sha256"]] = Owner(
                    c["image_id"],
                    c["batch_id"],
                    c["file"],
                    c["duplicate_of"] is not None,
                    ours[c["sha256"]],
                )
        plan.drop_vectors = sorted(s for s in ours if s not in plan.owners)
        for f in conn.execute(
            "SELECT face_id, sha256 FROM faces WHERE batch_id=? ORDER BY face_id",
            (batch_id,),
        ):
            if f["sha256"] in plan.owners:
                plan.moved_faces[f["face_id"]] = f["sha256"]
                continue
            plan.drop_faces.append(f["face_id"])
    return plan


def refusal(batch_id: int, state: BatchState) -> InvalidState:
    if state == BatchState.RUNNING:
        return InvalidState(
            f"batch {batch_id} is running; a running batch cannot be removed",
            hint=f"Cancel it first (imgtrain queue cancel {batch_id}), wait until `imgtrain queue`"
            f" shows it cancelled, then remove it.",
        )
    if state in (BatchState.WAITING, BatchState.CLAIMING):
        return InvalidState(
            f"batch {batch_id} is {state}: it has not been processed yet",
            hint=f"Cancel it (imgtrain queue cancel {batch_id}: a waiting batch is dropped at"
            " once), then remove it if its rows should go too.",
        )
    return InvalidState(
        f"batch {batch_id} is already removed",
        hint="See what went with it in `imgtrain queue`.",
    )


def apply(ledger: Ledger, plan: Plan) -> tuple[list[int], list[int]]:
    """Hand shared photos to their copies and delete the batch's rows; returns the clusters
    and the people that lost faces (joins the caller's transaction: the caller refreshes
    them in the same one, so nothing else sees them stale)."""
    with ledger.transaction() as conn:
        faces = json.dumps(plan.drop_faces)
        lost = conn.execute(
            "SELECT DISTINCT cluster_id, person_id FROM faces"
            " WHERE face_id IN (SELECT value FROM json_each(?))",
            (faces,),
        ).fetchall()
        for sha, owner in plan.owners.items():
            if owner.was_duplicate:
                conn.execute(
                    "INSERT OR REPLACE INTO image_phases(image_id, phase, state, error_code,"
                    " message, detail, updated_at) SELECT ?, phase, state, error_code, message,"
                    " detail, ? FROM image_phases WHERE image_id=?",
                    (owner.image_id, time.time(), owner.original),
                )
                conn.execute(
                    "UPDATE images SET duplicate_of=NULL WHERE image_id=?", (owner.image_id,)
                )
            conn.execute(
                "UPDATE images SET duplicate_of=? WHERE sha256=? AND batch_id != ?"
                " AND image_id != ? AND duplicate_of IS NOT NULL",
                (owner.image_id, sha, plan.batch_id, owner.image_id),
            )
            conn.execute(
                "UPDATE faces SET image_id=?, batch_id=? WHERE sha256=? AND batch_id=?",
                (owner.image_id, owner.batch_id, sha, plan.batch_id),
            )
        conn.execute(
            "DELETE FROM face_rejections WHERE face_id IN (SELECT value FROM json_each(?))",
            (faces,),
        )
        conn.execute(
            "DELETE FROM faces WHERE face_id IN (SELECT value FROM json_each(?))", (faces,)
        )
        conn.execute(
            "DELETE FROM image_phases WHERE image_id IN"
            " (SELECT image_id FROM images WHERE batch_id=?)",
            (plan.batch_id,),
        )
        conn.execute("DELETE FROM images WHERE batch_id=?", (plan.batch_id,))
        conn.execute("DELETE FROM batch_phases WHERE batch_id=?", (plan.batch_id,))
    clusters = sorted({r["cluster_id"] for r in lost if r["cluster_id"] is not None})
    people = sorted({r["person_id"] for r in lost if r["person_id"] is not None})
    return clusters, people


def record(ledger: Ledger, plan: Plan, **counts: int) -> RemovalRow:
    """Keep what went (counts: clusters_changed, clusters_removed, people_changed) and mark the
    batch `removed`; joins the caller's transaction."""
    with ledger.transaction() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO removals(batch_id, at, images, faces, image_vectors,"
            " face_vectors, shared, clusters_changed, clusters_removed, people_changed, path)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                plan.batch_id,
                time.time(),
                len(plan.image_ids),
                len(plan.drop_faces),
                len(plan.drop_vectors),
                len(plan.drop_faces),
                len(plan.owners),
                counts.get("clusters_changed", 0),
                counts.get("clusters_removed", 0),
                counts.get("people_changed", 0),
                plan.path,
            ),
        )
        conn.execute(
            "UPDATE batches SET state=?, cancel_requested=0 WHERE batch_id=?",
            (BatchState.REMOVED, plan.batch_id),
        )
    row = removals(ledger, [plan.batch_id]).get(plan.batch_id)
    assert row is not None
    return row


def photos_deleted(ledger: Ledger, batch_id: int, n: int) -> None:
    with ledger.transaction() as conn:
        conn.execute("UPDATE removals SET photos_deleted=? WHERE batch_id=?", (n, batch_id))


def removals(ledger: Ledger, batch_ids: list[int] | None = None) -> dict[int, RemovalRow]:
    """What went with each removed batch (all of them, or those asked for)."""
    sql, params = "SELECT * FROM removals", []
    if batch_ids is not None:
        sql += " WHERE batch_id IN (SELECT value FROM json_each(?))"
        params.append(json.dumps(batch_ids))
    return {r["batch_id"]: _removal(r) for r in ledger.query(sql, params)}


def _removal(r: Any) -> RemovalRow:
    return RemovalRow(**{k: r[k] for k in RemovalRow.__dataclass_fields__})
