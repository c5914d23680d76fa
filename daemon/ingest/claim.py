"""Claiming a settled inbox entry as a batch, crash-safely.

The batch id is reserved in the ledger, its permanent home recorded, then the
entry is renamed there (one atomic step on the same filesystem), hashed, and
the batch made runnable. `recover_claims` finishes whatever a crash
interrupted, so nothing is lost and nothing is claimed twice.

A dropped link is claimed only if it leads into `inbox.link_roots`, judged
here at claim time; the claimed link is then pinned to the folder (or file)
that was checked (see fence.py).
"""

from __future__ import annotations

import errno
import logging
import os
from datetime import datetime
from pathlib import Path

from daemon.config import Config
from daemon.errors import Code, ImgtrainError, LinkOutsideRoots
from daemon.ingest import fence, listing, scan
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
    found = listing.scan_batch(
        dest,
        config.inbox.ignore,
        follow_top_links=kind == "loose",
        link_roots=fence.link_roots(config),
    )
    skipped = found.skipped + (extra_skipped or [])
    ledger.claims.finish_claim(batch_id, found.files, skipped, phases=list(config.phases))
    log.info(
        "claimed batch %d from %s: %d images, %d skipped, %d other files left out",
        batch_id,
        dest.name,
        len(found.files),
        len(skipped),
        found.ignored,
    )


def claim_entry(ledger: Ledger, config: Config, entry: Path) -> int:
    """Claim one folder (or link to a folder) from the inbox.

    Raises ClaimRefused, or LinkOutsideRoots for a link that leads outside
    inbox.link_roots (no batch is made then and the link stays where it is).
    """
    kind = "symlink" if entry.is_symlink() else "folder"
    name = scan.printable(entry.name)
    real = _link_target(entry, config) if kind == "symlink" else None
    batch_id = ledger.claims.reserve_batch(name, kind, [str(entry)])
    dest = batch_home(config, batch_id, name)
    ledger.claims.set_batch_path(batch_id, dest)
    try:
        _move(entry, dest)
    except OSError as exc:
        refusal = _refusal(exc, f"'{name}'")
        ledger.claims.fail_claim(batch_id, refusal.code, refusal.message)
        raise refusal from exc
    if real is not None and os.path.islink(dest):  # (swapped for a folder: their own files)
        fence.pin(dest, real)  # what was checked, whatever the dropped link says by now
    _finish(ledger, config, batch_id, dest, kind)
    return batch_id


def _link_target(entry: Path, config: Config) -> str:
    try:
        return fence.link_target(entry, config)
    except OSError as exc:
        raise ClaimRefused(
            Code.SYMLINK_SKIPPED,
            f"the link '{scan.printable(entry.name)}' leads to no folder"
            f" ({exc.strerror or exc}); it is left alone",
        ) from exc


def claim_loose(ledger: Ledger, config: Config, files: list[Path]) -> int:
    """Gather loose files into one new batch folder. Raises ClaimRefused if none moved.

    Links among them are gathered only if they lead into inbox.link_roots
    (the others stay in the inbox, listed as LINK_OUTSIDE_ROOTS), then pinned.
    """
    targets: dict[Path, str] = {}
    refused: list[SkippedFile] = []
    for src in files:
        if src.is_symlink():
            try:
                targets[src] = fence.link_target(src, config)
            except LinkOutsideRoots as exc:
                refused.append(SkippedFile(scan.printable(src.name), exc.code, exc.message))
            except OSError as exc:
                message = f"a link that leads to no file ({exc.strerror or exc})"
                refused.append(SkippedFile(scan.printable(src.name), Code.SYMLINK_SKIPPED, message))
    files = [f for f in files if not f.is_symlink() or f in targets]
    name = f"loose-{datetime.now():%Y-%m-%dT%H%M}"
    batch_id = ledger.claims.reserve_batch(name, "loose", [str(f) for f in files])
    dest = batch_home(config, batch_id, name)
    ledger.claims.set_batch_path(batch_id, dest)
    stuck = _gather(files, dest) + refused
    if not any(dest.iterdir()):
        dest.rmdir()
        refusal = (
            ClaimRefused(Code(stuck[0].code), stuck[0].message)
            if stuck
            else ClaimRefused(Code.NOT_FOUND, "the loose files vanished before they were claimed")
        )
        ledger.claims.fail_claim(batch_id, refusal.code, refusal.message)
        raise refusal
    for src, real in targets.items():
        if os.path.islink(dest / src.name):
            fence.pin(dest / src.name, real)
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
        if not _repin(ledger, config, batch.batch_id, batch.kind, dest):
            continue
        _finish(ledger, config, batch.batch_id, dest, batch.kind, stuck)
        log.info("finished interrupted claim of batch %d", batch.batch_id)
        queued.append(batch.batch_id)
    return queued


def _repin(ledger: Ledger, config: Config, batch_id: int, kind: str, dest: Path) -> bool:
    """Check and pin claimed links again after a crash; False if the claim had to fail.

    A crash may have come between moving a link and pinning it, and where
    it leads may have changed since: it is judged again where it now lies.
    A linked folder that now leads outside the roots fails its claim and the
    link is moved aside into data/rejected/; loose links that do are left
    unpinned and the listing reports them.
    """
    roots = fence.link_roots(config)
    if kind == "loose":
        for entry in os.scandir(dest):
            if entry.is_symlink():
                real = os.path.realpath(entry.path)
                if scan.is_within(real, roots) and os.path.isfile(real):
                    fence.pin(Path(entry.path), real)
        return True
    if kind != "symlink" or not os.path.islink(dest):
        return True
    try:
        real = os.path.realpath(dest, strict=True)
        if not scan.is_within(real, roots):
            raise fence.outside(dest, real, roots)
        fence.pin(dest, real)
        return True
    except LinkOutsideRoots as exc:
        ledger.claims.fail_claim(batch_id, exc.code, exc.message)
    except OSError as exc:
        message = f"the claimed link leads to no folder ({exc.strerror or exc})"
        ledger.claims.fail_claim(batch_id, Code.SYMLINK_SKIPPED, message)
    config.rejected_dir.mkdir(parents=True, exist_ok=True)
    os.rename(dest, config.rejected_dir / dest.name)  # never a link to elsewhere in batches/
    log.warning("batch %d: claimed link moved aside to %s", batch_id, config.rejected_dir)
    return False
