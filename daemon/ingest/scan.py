"""What is in a dropped folder: the ignore rules, walks, and stat-only surveys.

Everything here reads the filesystem and nothing writes it. Walks never
follow a symbolic link below the top: a link inside a batch could point
anywhere (or at itself), so it is an item of its own, reported when the
batch is listed (listing.py: LINK_OUTSIDE_ROOTS when it leads out of the
batch's folder and out of every `inbox.link_roots` folder, SYMLINK_SKIPPED
otherwise). The top entry may itself be a link to a folder; whether it may
be followed is decided before (fence.py).

A survey of a dropped folder can be bounded (`Limits`): it stops at the
first entry over a limit, so a drop of `/` costs a bounded walk, not hours.

Images are recognised by content as well as by name: a JPEG called `IMG_1`
is found, and a text file called `photo.jpg` is still an image candidate.
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from daemon.imaging.decode import sniff_format

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


def is_within(path: str, folders: Iterable[str]) -> bool:
    """Whether `path` is one of `folders` or below one (all absolute, links resolved)."""
    for folder in folders:
        try:
            if os.path.commonpath([path, folder]) == folder:
                return True
        except ValueError:  # one relative, one absolute: not comparable, not inside
            continue
    return False


# -- walking ----------------------------------------------------------------------

Kind = Literal["file", "link", "partial", "ignored", "error", "dir", "deep"]


@dataclass(frozen=True)
class Item:
    rel: str  # "/"-separated path below the walked root
    path: str
    kind: Kind
    error: OSError | None = None


def walk(
    root: Path,
    extra: list[str] | tuple[str, ...] = (),
    follow_top_links: bool = False,
    max_depth: int | None = None,
) -> Iterator[Item]:
    """Every entry below `root`, depth first, without following inner links.

    Ignored folders are not entered. A folder that cannot be listed is one
    item of kind "error" (the root too, as rel ""). Each folder entered is an
    item of kind "dir"; one more than `max_depth` levels down is an item of
    kind "deep" and is not entered. `follow_top_links` makes links directly
    inside root count as the files they point to (a loose batch holds the
    links the user dropped). Raises FileNotFoundError if root is gone.
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
        depth = prefix.count("/") + 1  # of the folders found in this one
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
                    if max_depth is not None and depth > max_depth:
                        yield Item(rel, entry.path, "deep")
                    else:
                        yield Item(rel, entry.path, "dir")
                        stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    yield Item(rel, entry.path, "file")
                else:  # fifo, socket, device: opening one could block forever
                    yield Item(rel, entry.path, "ignored")
            except OSError as exc:
                yield Item(rel, entry.path, "error", exc)


@dataclass(frozen=True)
class Limits:
    """What one dropped folder may cost (inbox.max_files_per_batch, max_depth, max_batch_bytes)."""

    files: int  # entries: files and folders
    depth: int  # folder levels below the dropped folder
    bytes: int  # total size of its files


@dataclass(frozen=True)
class Over:
    """The limit a dropped folder went over, as the person who can raise it needs it."""

    key: str  # the config key, e.g. "inbox.max_depth"
    limit: int
    what: str  # "more than 1,000 files and folders"


@dataclass(frozen=True)
class Survey:
    files: dict[str, tuple[int, int]]  # rel path -> (size, mtime_ns), photos-to-be only
    junk: dict[str, tuple[int, int]]  # the same for ignored entries (hidden rsync temps too)
    partial: bool  # an in-progress download or copy is inside
    over: Over | None = None  # the first limit exceeded; the survey stopped there
    seen: int = 0  # entries walked

    def fingerprint(self) -> dict[str, tuple[int, int]]:
        """Everything that changes while a copy is going on, ignored files included."""
        return {**self.files, **{"\0" + rel: st for rel, st in self.junk.items()}}


def survey(
    entry: Path, extra: list[str] | tuple[str, ...] = (), limits: Limits | None = None
) -> Survey:
    """Stat-only look at a top-level inbox entry (a folder, a link to one, or a file).

    Unlistable folders appear as "<rel>/" -> (-1, -1) so that they count as
    content (and are reported when claimed) instead of looking empty. With
    `limits`, the walk stops at the first entry over one and says which.
    Raises FileNotFoundError if the entry is gone.
    """
    st = os.stat(entry)
    if not stat.S_ISDIR(st.st_mode):
        key = (st.st_size, st.st_mtime_ns)
        if is_ignored(entry.name, extra):
            return Survey({}, {entry.name: key}, is_partial(entry.name), seen=1)
        return Survey({entry.name: key}, {}, False, seen=1)
    files: dict[str, tuple[int, int]] = {}
    junk: dict[str, tuple[int, int]] = {}
    partial = False
    seen = size = 0
    over: Over | None = None
    for item in walk(entry, extra, max_depth=limits.depth if limits else None):
        seen += 1
        if limits is not None:
            over = _over(limits, item, seen, size)
            if over is not None:
                break  # the walk (a generator) stops here: nothing more is listed
        if item.kind == "dir":
            continue
        if item.kind == "error":
            files[item.rel + "/"] = (-1, -1)
            continue
        try:
            s = os.lstat(item.path)
        except FileNotFoundError:
            continue
        if item.kind in ("file", "link"):
            files[item.rel] = (s.st_size, s.st_mtime_ns)
            size += s.st_size
        else:
            junk[item.rel] = (s.st_size, s.st_mtime_ns)
            partial = partial or item.kind == "partial"
    if over is None and limits is not None and size > limits.bytes:
        over = _bytes_over(limits)
    return Survey(files, junk, partial, over, seen)


def _over(limits: Limits, item: Item, seen: int, size: int) -> Over | None:
    if seen > limits.files:
        return Over(
            "inbox.max_files_per_batch",
            limits.files,
            f"more than {limits.files:,} files and folders",
        )
    if item.kind == "deep":
        return Over(
            "inbox.max_depth",
            limits.depth,
            f"folders more than {limits.depth} levels deep ({printable(item.rel)})",
        )
    if size > limits.bytes:
        return _bytes_over(limits)
    return None


def _bytes_over(limits: Limits) -> Over:
    return Over("inbox.max_batch_bytes", limits.bytes, f"more than {limits.bytes:,} bytes")


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
