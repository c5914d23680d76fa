"""Taking a batch back out of the library (`imgtrain queue remove`): rows, vectors, clusters.

It lives with the people code because removing faces changes clusters and
people: every cluster that loses a face gets its size, centroid and
representative recomputed from the faces it keeps (an emptied one is
deleted), and every person who loses one a new prototype (none, if no face
is left: the person stays named, with no faces).

The order keeps an interruption harmless: the ledger marks the batch
`removing` and plans (`daemon.ledger.removal.begin`); the vectors go from
every image collection (one per CLIP model) and from `faces`; then one ledger
transaction deletes the rows, refreshes clusters and prototypes and records
the removal. Run again, the command picks up a `removing` batch where it was.
A photo another batch holds a copy of keeps its vector and faces, now
belonging to that copy (their metadata says so). Photos on disk go only when
asked, after everything else.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import InvalidState
from daemon.ledger import removal
from daemon.ledger.ledger import Ledger
from daemon.ledger.removal import Plan, RemovalRow
from daemon.people.operations import refresh_cluster, refresh_prototype
from daemon.people.photos import mirror_photos

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    batch_id: int
    name: str
    record: RemovalRow
    photos: str | None  # where the batch's photos are (or were, when deleted)
    photos_deleted: bool
    link_removed: bool  # a linked folder: the link went, the photos it leads to stay


def plan(ledger: Ledger, batch_id: int) -> Plan:
    """Mark the batch `removing` and say what goes (the first step; `finish` the rest)."""
    return removal.begin(ledger, batch_id)


def remove_batch(
    ledger: Ledger, store: Any, batch_id: int, *, batches_dir: Path, delete_photos: bool = False
) -> Removed:
    return finish(ledger, store, plan(ledger, batch_id), batches_dir, delete_photos)


def finish(ledger: Ledger, store: Any, p: Plan, batches_dir: Path, delete_photos: bool) -> Removed:
    _store_side(store, p)
    with ledger.transaction():
        clusters, people = removal.apply(ledger, p)
        removed = 0
        for cid in clusters:
            refresh_cluster(ledger, store, cid)
            removed += ledger.clusters.get(cid) is None
        for pid in people:
            refresh_prototype(ledger, store, pid)
        record = removal.record(
            ledger,
            p,
            clusters_changed=len(clusters) - removed,
            clusters_removed=removed,
            people_changed=len(people),
        )
    # A photo that stays (a copy holds it) keeps its faces, and so who is in it.
    mirror_photos(ledger, store, p.owners)
    what = f"{record.images} images, {record.faces} faces"
    log.info("batch %d '%s' removed: %s", p.batch_id, p.name, what)
    deleted = link = False
    if delete_photos and p.path:
        path = Path(p.path)
        if p.kind == "symlink" or path.is_symlink():
            link = _unlink(path)
        else:
            deleted = _delete_folder(path, batches_dir)
            removal.photos_deleted(ledger, p.batch_id, record.images)
            record = removal.removals(ledger, [p.batch_id])[p.batch_id]
    return Removed(p.batch_id, p.name, record, p.path, deleted, link)


def _store_side(store: Any, p: Plan) -> None:
    """Vectors out of every image collection and `faces`; shared photos re-labelled."""
    owned = sorted(p.owners)
    labels = [{"path": p.owners[s].path, "batch_id": p.owners[s].batch_id} for s in owned]
    for name in store.image_collections():
        store.delete_images(p.drop_vectors, name=name)
        store.update_images(owned, labels, name=name)
    store.delete_faces(p.drop_faces)
    moved = sorted(p.moved_faces)
    store.update_faces(
        moved,
        [
            {
                "image_id": p.moved_faces[f],
                "path": p.owners[p.moved_faces[f]].path,
                "batch_id": p.owners[p.moved_faces[f]].batch_id,
            }
            for f in moved
        ],
    )


def _unlink(path: Path) -> bool:
    if not path.is_symlink():
        return False
    path.unlink()
    log.info("removed the link %s (the photos it leads to stay)", path)
    return True


def _delete_folder(path: Path, batches_dir: Path) -> bool:
    """Delete the batch's folder: only ever one under data/batches (links in it stay links)."""
    try:
        inside = path.resolve().parent == batches_dir.resolve()
    except OSError:
        inside = False
    if not inside:
        raise InvalidState(
            f"{path} is not a batch folder under {batches_dir}; its photos are not deleted",
            hint="Delete them yourself if they should go.",
        )
    if path.exists():
        shutil.rmtree(path)
        log.info("deleted %s", path)
    return True
