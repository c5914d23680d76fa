"""`imgtrain queue remove ID`: take a batch back out of the library.

Its images, faces and vectors go from the ledger and the store; clusters and
people that had its faces are recomputed from the faces they keep
(`daemon.people.removal`). Photos on disk stay unless `--delete-photos`
(asked for confirmation, or `--yes`). `imgtrain queue` shows what went.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from daemon.commands import render
from daemon.config import Config
from daemon.ledger import removal
from daemon.ledger.ledger import Ledger
from daemon.ledger.removal import RemovalRow


def add_parser(actions: argparse._SubParsersAction) -> None:
    rm = actions.add_parser(
        "remove",
        help="take a batch back out: its images, faces and vectors (photos stay)",
        description="A running batch must be cancelled first (imgtrain queue cancel ID).",
    )
    rm.add_argument("batch_id", type=int, metavar="ID")
    rm.add_argument(
        "--delete-photos",
        action="store_true",
        help="delete the batch's folder of photos from disk too (asks first)",
    )
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask before deleting photos")
    render.add_json_flag(rm, sub=True)


def run(ledger: Ledger, config: Config, args: argparse.Namespace) -> int:
    from daemon.people.removal import remove_batch
    from daemon.store.chroma import Store

    batch = ledger.batch(args.batch_id)
    if batch.state not in removal.REMOVABLE:
        raise removal.refusal(batch.batch_id, batch.state)
    if args.delete_photos and not args.yes and not _confirm(batch.batch_id, batch.name, batch.path):
        print("nothing removed (the photos' deletion was not confirmed)", file=sys.stderr)
        return 1
    done = remove_batch(
        ledger,
        Store(config),
        batch.batch_id,
        batches_dir=config.batches_dir,
        delete_photos=args.delete_photos,
    )
    if args.json:
        render.print_json(
            {
                "batch_id": done.batch_id,
                "name": done.name,
                "state": "removed",
                "removed": removal_json(done.record),
                "photos_deleted": done.photos_deleted,
                "link_removed": done.link_removed,
            }
        )
        return 0
    if done.photos_deleted:
        photos = f"Its photos were deleted from {done.photos}."
    elif done.link_removed:
        photos = f"The link {done.photos} was removed; the photos it leads to stay."
    else:
        photos = f"Its photos stay in {done.photos} (--delete-photos deletes them)."
    render.console().print(
        f"batch {done.batch_id} '{done.name}' removed: {_counts(done.record)}. {photos}",
        markup=False,
        highlight=False,
    )
    return 0


def _confirm(batch_id: int, name: str, path: str | None) -> bool:
    sys.stderr.write(
        f"Remove batch {batch_id} '{name}' and delete its photos in {path} for good? [y/N] "
    )
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _counts(r: RemovalRow) -> str:
    shared = ""
    if r.shared == 1:
        shared = ", those of 1 photo kept for its copy in another batch"
    elif r.shared:
        shared = f", those of {r.shared} photos kept for their copies in other batches"
    people = "1 person" if r.people_changed == 1 else f"{r.people_changed} people"
    return (
        f"{r.images} images, {r.faces} faces; {r.image_vectors} image vectors and"
        f" {r.face_vectors} face vectors deleted{shared}; {r.clusters_changed} clusters"
        f" updated, {r.clusters_removed} removed; {people} updated"
    )


def removal_line(batch_id: int, r: RemovalRow | None) -> str:
    """Under `imgtrain queue`'s table: what went with a removed batch."""
    if r is None:
        return (
            f"batch {batch_id} removing: interrupted; run `imgtrain queue remove {batch_id}`"
            " again to finish"
        )
    photos = "photos deleted" if r.photos_deleted else f"photos kept in {r.path}"
    return f"batch {batch_id} removed {render.local_time(r.at)}: {_counts(r)}; {photos}"


def removal_json(r: RemovalRow | None) -> dict[str, Any] | None:
    if r is None:
        return None
    return {**render.plain(r), "at": render.iso(r.at)}
