"""The file list of a claimed batch: every image candidate, hashed, and what was skipped.

Reads only; what the inbox saw (walk, ignore rules, sniffing) is scan.py's.
Images are recognised by content as well as by name: a text file called
`photo.jpg` is still listed so the phases record UNREADABLE_IMAGE for it (the
user must see it); a file that is neither (notes.txt) is left out and only
counted. Inner links are never followed: one that leads out of the batch's
folder and out of every `inbox.link_roots` folder is LINK_OUTSIDE_ROOTS,
any other SYMLINK_SKIPPED.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import Code
from daemon.imaging.decode import sniff_format
from daemon.ingest.scan import IMAGE_EXTENSIONS, Item, is_within, printable, walk
from daemon.vocab import FileEntry, SkippedFile

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Listing:
    files: list[FileEntry]
    skipped: list[SkippedFile]
    ignored: int  # junk and non-image files left out silently


def _hash(path: str) -> tuple[str, int]:
    """SHA-256 and size of a regular file, streamed; refuses anything else."""
    # O_NOFOLLOW: the name may have been swapped for a link since the walk.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    with open(fd, "rb", buffering=0) as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        digest = hashlib.sha256()
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        size = 0
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def _utf8(rel: str) -> bool:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def scan_batch(
    root: Path,
    extra: list[str] | tuple[str, ...] = (),
    follow_top_links: bool = False,
    link_roots: Sequence[str] = (),
) -> Listing:
    """Hash every image candidate below a claimed batch folder (sorted by rel path).

    A link may lead into the batch's own folder or into one of `link_roots`
    (absolute, links resolved); one that leads anywhere else is reported as
    LINK_OUTSIDE_ROOTS and nothing behind it is read. Inner links are never
    followed; with `follow_top_links` (a loose batch) a top-level link to a
    file inside those folders is read where it leads.
    """
    allowed = (os.path.realpath(root), *link_roots)
    files: list[FileEntry] = []
    skipped: list[SkippedFile] = []
    ignored = 0
    for item in walk(root, extra, follow_top_links):
        rel = printable(item.rel)
        if item.kind == "dir":
            continue
        if item.kind in ("ignored", "partial"):
            ignored += 1
        elif item.kind == "link":
            skipped.append(_link_skip(item.path, rel, allowed))
        elif item.kind == "error":
            skipped.append(_read_error(rel or ".", item.error, "folder"))
        else:
            if follow_top_links and "/" not in item.rel and os.path.islink(item.path):
                # Read the file where the link leads now, once that place is allowed;
                # opening the resolved path (O_NOFOLLOW) means no later swap redirects it.
                real = os.path.realpath(item.path)
                if not is_within(real, allowed):
                    skipped.append(_outside(rel, real))
                    continue
                item = Item(item.rel, real, "file")
            entry = _list_file(item, rel)
            if entry is None:
                ignored += 1
            elif isinstance(entry, SkippedFile):
                skipped.append(entry)
            else:
                files.append(entry)
    files.sort(key=lambda f: f.rel_path)
    skipped.sort(key=lambda s: s.rel_path)
    return Listing(files, skipped, ignored)


def list_batch_files(
    root: Path,
    extra: list[str] | tuple[str, ...] = (),
    follow_top_links: bool = False,
    link_roots: Sequence[str] = (),
) -> tuple[list[FileEntry], list[SkippedFile]]:
    listing = scan_batch(root, extra, follow_top_links, link_roots)
    return listing.files, listing.skipped


def _link_skip(path: str, rel: str, allowed: Sequence[str]) -> SkippedFile:
    target = os.path.realpath(path)  # not strict: loops and dangling links resolve to a name
    if is_within(target, allowed):
        return SkippedFile(rel, Code.SYMLINK_SKIPPED, "links inside a batch are not followed")
    return _outside(rel, target)


def _outside(rel: str, target: str) -> SkippedFile:
    return SkippedFile(
        rel,
        Code.LINK_OUTSIDE_ROOTS,
        f"a link to {printable(target)}, outside this folder and every inbox.link_roots"
        " folder: not followed",
    )


def _list_file(item: Item, rel: str) -> FileEntry | SkippedFile | None:
    named_image = Path(item.path).suffix.casefold() in IMAGE_EXTENSIONS
    fmt = sniff_format(Path(item.path))
    if fmt is None and not named_image:
        if not os.access(item.path, os.R_OK):  # sniff_format could not look inside
            return _read_error(rel, PermissionError(errno.EACCES, "denied"), "file")
        return None
    if not _utf8(item.rel):
        return SkippedFile(
            rel, Code.UNREADABLE_IMAGE, "the file name is not valid UTF-8; rename the file"
        )
    try:
        sha, size = _hash(item.path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a link after the walk
            return SkippedFile(rel, Code.SYMLINK_SKIPPED, "links inside a batch are not followed")
        return _read_error(rel, exc, "file")
    return FileEntry(rel, sha, size, fmt)


def _read_error(rel: str, exc: OSError | None, what: str) -> SkippedFile:
    reason = (exc.strerror if exc is not None else None) or str(exc)
    if isinstance(exc, PermissionError):
        return SkippedFile(
            rel, Code.PERMISSION_DENIED, f"cannot read this {what}: permission denied"
        )
    return SkippedFile(rel, Code.UNREADABLE_IMAGE, f"cannot read this {what}: {reason}")
