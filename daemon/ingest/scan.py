"""What is in a dropped folder: the ignore rules, stat snapshots, and the file list.

Everything here reads the filesystem and nothing writes it. Walks never
follow a symbolic link below the top: a link inside a batch could point
anywhere (or at itself), so it is reported as SYMLINK_SKIPPED instead. The
top entry may itself be a link to a folder; the user dropped that link on
purpose, so it is followed.

Images are recognised by content as well as by name: a JPEG called `IMG_1`
is found, and a text file called `photo.jpg` is still listed so the phases
record UNREADABLE_IMAGE for it (the user must see it). A file that is neither
(notes.txt, video.mp4) is left out silently and only counted.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.errors import Code
from daemon.imaging.decode import sniff_format
from daemon.vocab import FileEntry, SkippedFile

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
    | {".heic", ".heif", ".avif"}
)
# Things photo folders carry that are not photos (compared case-insensitively).
JUNK_NAMES = frozenset(
    name.casefold()
    for name in (
        "Thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        "@eaDir",
        "#recycle",
        "$RECYCLE.BIN",
        "System Volume Information",
        "__MACOSX",
        "Icon\r",
    )
)
# Downloads and copies still being written; a folder holding one is not settled.
PARTIAL_SUFFIXES = (".part", ".partial", ".crdownload", ".download", ".tmp")
HASH_CHUNK = 1 << 20
SAFE_NAME_BYTES = 100

# Characters that are unsafe in a path component here or on an SMB share.
_UNSAFE_CHARS = re.compile(r'[/\\:*?"<>|]')
_RUNS = re.compile(r"_{2,}")


def is_partial(name: str) -> bool:
    return name.casefold().endswith(PARTIAL_SUFFIXES)


def is_ignored(name: str, extra: list[str] | tuple[str, ...] = ()) -> bool:
    """True for a file or folder name that is never a photo (or never one yet).

    `extra` holds glob patterns from `inbox.ignore`, matched against the name
    (not the path), case-insensitively.
    """
    folded = name.casefold()
    if name.startswith(".") or folded in JUNK_NAMES or is_partial(name):
        return True
    return any(fnmatch.fnmatchcase(folded, pattern.casefold()) for pattern in extra)


def printable(name: str) -> str:
    """A file name as valid UTF-8 text (undecodable bytes become U+FFFD), for the ledger."""
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def safe_name(name: str) -> str:
    """One harmless path component made from a dropped folder's name.

    No separators, no `..`, no control or invisible characters, at most
    SAFE_NAME_BYTES of UTF-8 (cut on a character boundary); letters in any
    script are kept so the batch folder stays recognisable.
    """
    text = unicodedata.normalize("NFC", printable(name))
    chars = []
    for ch in text:
        if ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            chars.append("_")
        elif ch.isspace():
            chars.append(" ")
        else:
            chars.append(ch)
    text = _RUNS.sub("_", _UNSAFE_CHARS.sub("_", "".join(chars)))
    text = " ".join(text.split()).strip(" ._")
    raw = text.encode("utf-8")[:SAFE_NAME_BYTES]
    text = raw.decode("utf-8", "ignore").strip(" ._")
    return text or "batch"


# -- walking ----------------------------------------------------------------------

Kind = Literal["file", "link", "partial", "ignored", "error"]


@dataclass(frozen=True)
class Item:
    rel: str  # "/"-separated path below the walked root
    path: str
    kind: Kind
    error: OSError | None = None


def walk(
    root: Path, extra: list[str] | tuple[str, ...] = (), follow_top_links: bool = False
) -> Iterator[Item]:
    """Every entry below `root`, depth first, without following inner links.

    Ignored folders are not entered. A folder that cannot be listed is one
    item of kind "error" (the root too, as rel ""). `follow_top_links` makes
    links directly inside root count as the files they point to (a loose batch
    holds the links the user dropped). Raises FileNotFoundError if root is gone.
    """
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except FileNotFoundError:
            if not prefix:
                raise
            continue  # vanished while we walked
        except OSError as exc:
            yield Item(prefix.rstrip("/"), folder, "error", exc)
            continue
        for entry in entries:
            rel = prefix + entry.name
            try:
                if is_ignored(entry.name, extra):
                    partial = is_partial(entry.name) and not entry.name.startswith(".")
                    yield Item(rel, entry.path, "partial" if partial else "ignored")
                elif entry.is_symlink():
                    if follow_top_links and not prefix and entry.is_file():
                        yield Item(rel, entry.path, "file")
                    else:
                        yield Item(rel, entry.path, "link")
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    yield Item(rel, entry.path, "file")
                else:  # fifo, socket, device: opening one could block forever
                    yield Item(rel, entry.path, "ignored")
            except OSError as exc:
                yield Item(rel, entry.path, "error", exc)


@dataclass(frozen=True)
class Survey:
    files: dict[str, tuple[int, int]]  # rel path -> (size, mtime_ns), photos-to-be only
    junk: dict[str, tuple[int, int]]  # the same for ignored entries (hidden rsync temps too)
    partial: bool  # an in-progress download or copy is inside

    def fingerprint(self) -> dict[str, tuple[int, int]]:
        """Everything that changes while a copy is going on, ignored files included."""
        return {**self.files, **{"\0" + rel: st for rel, st in self.junk.items()}}


def survey(entry: Path, extra: list[str] | tuple[str, ...] = ()) -> Survey:
    """Stat-only look at a top-level inbox entry (a folder, a link to one, or a file).

    Unlistable folders appear as "<rel>/" -> (-1, -1) so that they count as
    content (and are reported when claimed) instead of looking empty.
    Raises FileNotFoundError if the entry is gone.
    """
    st = os.stat(entry)
    if not stat.S_ISDIR(st.st_mode):
        key = (st.st_size, st.st_mtime_ns)
        if is_ignored(entry.name, extra):
            return Survey({}, {entry.name: key}, is_partial(entry.name))
        return Survey({entry.name: key}, {}, False)
    files: dict[str, tuple[int, int]] = {}
    junk: dict[str, tuple[int, int]] = {}
    partial = False
    for item in walk(entry, extra):
        if item.kind == "error":
            files[item.rel + "/"] = (-1, -1)
            continue
        try:
            s = os.lstat(item.path)
        except FileNotFoundError:
            continue
        if item.kind in ("file", "link"):
            files[item.rel] = (s.st_size, s.st_mtime_ns)
        else:
            junk[item.rel] = (s.st_size, s.st_mtime_ns)
            partial = partial or item.kind == "partial"
    return Survey(files, junk, partial)


def survey_loose(inbox: Path, extra: list[str] | tuple[str, ...] = ()) -> Survey:
    """The files lying directly in the inbox (links to files count as what they point at)."""
    files: dict[str, tuple[int, int]] = {}
    junk: dict[str, tuple[int, int]] = {}
    partial = False
    with os.scandir(inbox) as it:
        for entry in it:
            try:
                if not entry.is_file():
                    continue
                st = entry.stat()
            except OSError:
                continue
            if is_ignored(entry.name, extra):
                junk[entry.name] = (st.st_size, st.st_mtime_ns)
                partial = partial or is_partial(entry.name)
            else:
                files[entry.name] = (st.st_size, st.st_mtime_ns)
    return Survey(files, junk, partial)


def snapshot(entry: Path, extra: list[str] | tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """rel path -> (size, mtime_ns) of every non-ignored file below `entry`."""
    return survey(entry, extra).files


def has_partial_downloads(entry: Path, extra: list[str] | tuple[str, ...] = ()) -> bool:
    return survey(entry, extra).partial


def is_image_candidate(path: str | Path) -> bool:
    """Named like an image, or holding image bytes whatever its name."""
    if Path(path).suffix.casefold() in IMAGE_EXTENSIONS:
        return True
    return sniff_format(Path(path)) is not None


def has_images(entry: Path, extra: list[str] | tuple[str, ...] = ()) -> bool:
    """Whether claiming `entry` would give the phases (or the error list) anything.

    An unreadable subfolder counts: claiming records it as PERMISSION_DENIED,
    which the user must see. Raises PermissionError if the entry itself
    cannot be listed.
    """
    if not entry.is_dir():
        return not is_ignored(entry.name, extra) and is_image_candidate(entry)
    for item in walk(entry, extra):
        if item.kind == "error":
            if item.rel == "" and item.error is not None:
                raise item.error
            return True
        if item.kind == "file" and is_image_candidate(item.path):
            return True
    return False


# -- listing a claimed batch -----------------------------------------------------


@dataclass(frozen=True)
class Listing:
    files: list[FileEntry]
    skipped: list[SkippedFile]
    ignored: int  # junk and non-image files left out silently


def _hash(path: str, follow: bool) -> tuple[str, int]:
    """SHA-256 and size of a regular file, streamed; refuses anything else."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= os.O_NOFOLLOW  # the name may have been swapped for a link since the walk
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
    root: Path, extra: list[str] | tuple[str, ...] = (), follow_top_links: bool = False
) -> Listing:
    """Hash every image candidate below a claimed batch folder (sorted by rel path)."""
    files: list[FileEntry] = []
    skipped: list[SkippedFile] = []
    ignored = 0
    for item in walk(root, extra, follow_top_links):
        rel = printable(item.rel)
        if item.kind in ("ignored", "partial"):
            ignored += 1
        elif item.kind == "link":
            skipped.append(
                SkippedFile(rel, Code.SYMLINK_SKIPPED, "links inside a batch are not followed")
            )
        elif item.kind == "error":
            skipped.append(_read_error(rel or ".", item.error, "folder"))
        else:
            entry = _list_file(item, rel, follow_top_links)
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
    root: Path, extra: list[str] | tuple[str, ...] = (), follow_top_links: bool = False
) -> tuple[list[FileEntry], list[SkippedFile]]:
    listing = scan_batch(root, extra, follow_top_links)
    return listing.files, listing.skipped


def _list_file(item: Item, rel: str, follow_top_links: bool) -> FileEntry | SkippedFile | None:
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
        sha, size = _hash(item.path, follow=follow_top_links and "/" not in item.rel)
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
