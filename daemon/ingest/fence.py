"""What a dropped entry may make the daemon read: link roots and per-drop limits.

Whoever can write into the inbox is only half trusted (README, "Security"):
a link they drop is followed only into the folders the owner listed in
`inbox.link_roots`, and a folder they drop is claimed only within the
`inbox.max_*` limits. Links are judged by where they lead after every link
in the path is resolved, at claim time; the claimed batch then points at
that resolved folder (`pin`), so swapping the dropped link, or any link in
its chain, after the check cannot redirect what is read.
"""

from __future__ import annotations

import os
from pathlib import Path

from daemon.config import Config
from daemon.errors import Code, LimitExceeded, LinkOutsideRoots
from daemon.ingest import scan


def link_roots(config: Config) -> list[str]:
    """The allowed folders with their own links resolved (a root may itself be a link)."""
    return [os.path.realpath(root) for root in config.inbox.link_roots]


def limits(config: Config) -> scan.Limits:
    inbox = config.inbox
    return scan.Limits(inbox.max_files_per_batch, inbox.max_depth, inbox.max_batch_bytes)


def link_target(entry: Path, config: Config) -> str:
    """Where the dropped link `entry` leads, if inside an allowed root.

    Raises LinkOutsideRoots if not, OSError if the link is broken or loops.
    """
    real = os.path.realpath(entry, strict=True)
    roots = link_roots(config)
    if not scan.is_within(real, roots):
        raise outside(entry, real, roots)
    return real


def refusal(entry: Path, config: Config) -> tuple[Code, str] | None:
    """Why the dropped link `entry` must not be followed now (code, message), or None."""
    name = scan.printable(entry.name)
    try:
        real = Path(os.path.realpath(entry, strict=True))
    except OSError as exc:
        return Code.SYMLINK_SKIPPED, f"the link '{name}' is broken ({exc.strerror or exc})"
    for own in (config.inbox_dir, config.data_dir, config.status_dir):
        own = Path(os.path.realpath(own))
        if real == own or own.is_relative_to(real) or real.is_relative_to(own):
            return Code.SYMLINK_SKIPPED, (
                f"the link '{name}' points at {real}, which holds or is inside the daemon's"
                " own folders; link a photo folder elsewhere instead"
            )
    roots = link_roots(config)
    if not scan.is_within(str(real), roots):
        refused = outside(entry, str(real), roots)
        return refused.code, refused.message
    return None


def outside(entry: Path, real: str, roots: list[str]) -> LinkOutsideRoots:
    allowed = ", ".join(roots) if roots else "none are set"
    return LinkOutsideRoots(
        f"the link '{scan.printable(entry.name)}' leads to {scan.printable(real)}, outside"
        f" the folders links may lead into (inbox.link_roots: {allowed}); it is not"
        " followed and stays where it is. Add its folder to inbox.link_roots and reload"
        " to allow it",
        path=str(entry),
    )


def too_big(entry: Path, over: scan.Over) -> LimitExceeded:
    return LimitExceeded(
        f"'{scan.printable(entry.name)}' holds {over.what} ({over.key}: {over.limit}); it is"
        f" not claimed and stays in the inbox. Raise {over.key} in config.yaml and reload"
        " (systemctl reload imgtrain) to claim it",
        path=str(entry),
    )


def pin(link: Path, real: str) -> None:
    """Make `link` (a claimed link, in the daemon's own folder) lead straight to `real`.

    The dropped link may be relative, or lead through other links the
    dropper can still change; the pinned one is absolute and holds no link
    in its path, so it keeps leading where it was checked. Atomic: a new link
    replaces the old in one rename.
    """
    if os.readlink(link) == real:
        return
    tmp = link.with_name(f".{link.name}.pin")
    if os.path.lexists(tmp):
        os.unlink(tmp)  # left by a crash
    os.symlink(real, tmp)
    os.replace(tmp, link)
