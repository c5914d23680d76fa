"""Claiming a settled inbox entry as a batch, crash-safely.

The batch id is reserved in the ledger, its permanent home recorded, then the
entry is renamed there (one atomic step on the same filesystem), hashed, and
the batch made runnable. `recover_claims` finishes whatever a crash
interrupted, so nothing is lost and nothing is claimed twice.
"""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime
from pathlib import Path

from daemon.config import Config
from daemon.errors import Code, ImgtrainError
from daemon.ingest import scan
from daemon.ledger.ledger import Ledger
from daemon.vocab import SkippedFile

log = logging.getLogger("imgtrain.inbox")


class ClaimRefused(ImgtrainError):
    """An entry could not be moved out of the inbox; its batch is marked failed."""

    default_hint = "Fix the cause named in the message; the entry is retried when it changes."

    def __init__(self, code: Code, message: str, *, path: str | None = None) -> None:
        super().__init__(message, path=path)
        self.code = code


def batch_home(config: Config, batch_id: int, name: str) -> Path:
    return config.batches_dir / f"{batch_id:06d}-{scan.safe_name(name)}"


def _move(src: Path, dest: Path) -> None:
    # rename(2) silently replaces an empty directory; a batch home is never reused.
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, "already exists", str(dest))
    os.rename(src, dest)


def _refusal(exc: OSError, what: str) -> ClaimRefused:
    if isinstance(exc, FileNotFoundError):
        return ClaimRefused(Code.NOT_FOUND, f"{what} vanished before it could be claimed")
    if isinstance(exc, PermissionError):
        return ClaimRefused(
            Code.PERMISSION_DENIED,
            f"cannot move {what} out of the inbox: permission denied (the daemon needs write"
            " access to the inbox and to a dropped folder itself)",
        )
    if exc.errno == errno.EXDEV:
        return ClaimRefused(
            Code.CONFIG_INVALID,
            f"cannot move {what}: inbox_dir and data_dir are on different filesystems",
        )
    return ClaimRefused(Code.BATCH_FAILED, f"cannot move {what}: {exc.strerror or exc}")


def _finish(
    ledger: Ledger,
    config: Config,
    batch_id: int,
    dest: Path,
    kind: str,
    extra_skipped: list[SkippedFile] | None = None,
) -> None:
    listing = scan.scan_batch(dest, config.inbox.ignore, follow_top_links=kind == "loose")
    skipped = listing.skipped + (extra_skipped or [])
    ledger.claims.finish_claim(batch_id, listing.files, skipped, phases=list(config.phases))
    log.info(
        "claimed batch %d from %s: %d images, %d skipped, %d other files left out",
        batch_id,
        dest.name,
        len(listing.files),
        len(skipped),
        listing.ignored,
    )


def claim_entry(ledger: Ledger, config: Config, entry: Path) -> int:
    """Claim one folder (or link to a folder) from the inbox. Raises ClaimRefused."""
    kind = "symlink" if entry.is_symlink() else "folder"
    name = scan.printable(entry.name)
    batch_id = ledger.claims.reserve_batch(name, kind, [str(entry)])
    dest = batch_home(config, batch_id, name)
    ledger.claims.set_batch_path(batch_id, dest)
    try:
        _move(entry, dest)
    except OSError as exc:
        refusal = _refusal(exc, f"'{name}'")
        ledger.claims.fail_claim(batch_id, refusal.code, refusal.message)
        raise refusal from exc
    _finish(ledger, config, batch_id, dest, kind)
    return batch_id


def claim_loose(ledger: Ledger, config: Config, files: list[Path]) -> int:
    """Gather loose files into one new batch folder. Raises ClaimRefused if none moved."""
    name = f"loose-{datetime.now():%Y-%m-%dT%H%M}"
    batch_id = ledger.claims.reserve_batch(name, "loose", [str(f) for f in files])
    dest = batch_home(config, batch_id, name)
    ledger.claims.set_batch_path(batch_id, dest)
    stuck = _gather(files, dest)
    if not any(dest.iterdir()):
        dest.rmdir()
        refusal = (
            ClaimRefused(Code(stuck[0].code), stuck[0].message)
            if stuck
            else ClaimRefused(Code.NOT_FOUND, "the loose files vanished before they were claimed")
        )
        ledger.claims.fail_claim(batch_id, refusal.code, refusal.message)
        raise refusal
    _finish(ledger, config, batch_id, dest, "loose", stuck)
    return batch_id


def _gather(files: list[Path], dest: Path) -> list[SkippedFile]:
    """Move loose files into `dest` (idempotent); the ones that will not move are returned."""
    dest.mkdir(exist_ok=True)
    stuck = []
    for src in files:
        target = dest / src.name
        if os.path.lexists(target):
            continue  # moved before a crash
        try:
            os.rename(src, target)
        except FileNotFoundError:
            continue
        except OSError as exc:
            refusal = _refusal(exc, "the file")
            stuck.append(SkippedFile(scan.printable(src.name), refusal.code, refusal.message))
    return stuck


def recover_claims(ledger: Ledger, config: Config) -> list[int]:
    """Finish claims a crash interrupted; returns the batch ids now queued.

    Each step is idempotent: a source still in the inbox is moved now, a home
    that already holds the files is scanned, and a claim whose files are in
    neither place is marked failed (never a second batch for the same drop).
    """
    queued = []
    batches_dir = os.path.abspath(config.batches_dir)
    claiming = ledger.claims.claiming_batches()
    if claiming:
        config.batches_dir.mkdir(parents=True, exist_ok=True)
    for batch in claiming:
        sources = [Path(s) for s in batch.sources]
        dest = Path(batch.path) if batch.path else batch_home(config, batch.batch_id, batch.name)
        if os.path.abspath(dest.parent) != batches_dir:
            ledger.claims.fail_claim(
                batch.batch_id,
                Code.INVALID_STATE,
                f"interrupted claim points at {dest}, outside {config.batches_dir};"
                " the files were left where they are",
            )
            continue
        if batch.path is None:
            ledger.claims.set_batch_path(batch.batch_id, dest)
        stuck: list[SkippedFile] = []
        try:
            if batch.kind == "loose":
                stuck = _gather(sources, dest)
                present = any(dest.iterdir())
                if not present:
                    dest.rmdir()
            else:
                if not os.path.lexists(dest) and sources and os.path.lexists(sources[0]):
                    _move(sources[0], dest)
                present = os.path.lexists(dest)
        except OSError as exc:
            refusal = _refusal(exc, f"'{batch.name}'")
            ledger.claims.fail_claim(batch.batch_id, refusal.code, refusal.message)
            continue
        if not present:
            ledger.claims.fail_claim(
                batch.batch_id,
                Code.NOT_FOUND,
                f"the claim of '{batch.name}' was interrupted and its files are gone from"
                " the inbox and from the batch folder",
            )
            continue
        _finish(ledger, config, batch.batch_id, dest, batch.kind, stuck)
        log.info("finished interrupted claim of batch %d", batch.batch_id)
        queued.append(batch.batch_id)
    return queued
