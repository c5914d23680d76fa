"""Who besides the daemon can steer it through its folders: `imgtrain doctor`'s trust checks.

Whoever can write into the inbox is half trusted: they choose what the
daemon reads (README, "Security"). That should be the people who drop
photos, through a group, never every user of the machine. The data and
status folders hold the ledger, the vectors and the status people rely on:
only the daemon's user should write there.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.config import Config


def _group_members(gid: int) -> set[str] | None:
    """Every user in group `gid`, listed or by primary group; None if it is unknown."""
    try:
        group = grp.getgrgid(gid)
    except KeyError:
        return None
    return set(group.gr_mem) | {u.pw_name for u in pwd.getpwall() if u.pw_gid == gid}


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def other_writers(path: Path, uid: int, name: str) -> list[str]:
    """Who, other than the user `uid` called `name` (and root), may write in `path`."""
    st = path.stat()
    who = []
    if st.st_mode & stat.S_IWOTH:
        who.append("every user")
    if st.st_mode & stat.S_IWGRP:
        members = _group_members(st.st_gid)
        others = sorted(members - {name}) if members is not None else None
        if others is None or others:
            listed = ", ".join(others) if others else "members unknown"
            who.append(f"group {_group(st.st_gid)} ({listed})")
    if st.st_mode & stat.S_IWUSR and st.st_uid not in (uid, 0):
        who.append(f"its owner {_name(st.st_uid)}")
    return who


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def problems(config: Config, uid: int, name: str) -> list[str]:
    """One sentence per folder that more people can write than should, with the fix."""
    found = []
    inbox = config.inbox_dir
    if inbox.is_dir() and inbox.stat().st_mode & stat.S_IWOTH:
        mode = stat.S_IMODE(inbox.stat().st_mode)
        found.append(
            f"the inbox {inbox} is writable by every user (mode {mode:04o}): anyone with a"
            " login can make the daemon read and index what they drop there -> chmod o-w"
            f" {inbox}, and let the people who drop photos in through a group"
        )
    for key in ("data_dir", "status_dir"):
        path = Path(getattr(config, key))
        if not path.is_dir():
            continue
        who = other_writers(path, uid, name)
        if who:
            found.append(
                f"{key} {path} is writable by {', '.join(who)}, not only by {name}: they could"
                f" rewrite the ledger, the vectors or the status -> chmod go-w {path}"
            )
    return found


def link_roots_note(config: Config) -> tuple[bool, str]:
    """(fine, detail) about inbox.link_roots: what a dropped link may lead into."""
    roots = config.inbox.link_roots
    if not roots:
        return True, "none set: links dropped in the inbox are not followed (LINK_OUTSIDE_ROOTS)"
    missing = [str(r) for r in roots if not os.path.isdir(r)]
    everything = [str(r) for r in roots if os.path.realpath(r) == "/"]
    listed = ", ".join(str(r) for r in roots)
    if everything:
        return False, f"{listed}: '/' lets a dropped link lead anywhere -> list photo folders only"
    if missing:
        return False, f"{listed}: {', '.join(missing)} is not a folder (yet) -> check the path"
    return True, f"dropped links may lead into {listed}"


@dataclass
class DaemonUser:
    """Whose permissions matter: the running daemon's, else the person running doctor."""

    uid: int
    gids: set[int]
    name: str
    source: str


def daemon_user(status: Any, config: Config) -> DaemonUser:
    import psutil

    if status is not None and status.daemon.hostname == socket.gethostname():
        try:
            proc = psutil.Process(status.daemon.pid)
            uid = proc.uids().effective
            name = proc.username()
            gids = set(proc.gids())
            with contextlib.suppress(KeyError):  # a uid with no passwd entry
                gids |= set(os.getgrouplist(name, pwd.getpwuid(uid).pw_gid))
            return DaemonUser(uid, gids, name, f"the running daemon, pid {status.daemon.pid}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    uid = os.geteuid()
    name = pwd.getpwuid(uid).pw_name
    return DaemonUser(uid, {os.getegid(), *os.getgroups()}, name, "you; the daemon is not running")


def writable_by(path: Path, user: DaemonUser) -> bool:
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        return False
    if user.uid == os.geteuid():
        return os.access(path, os.W_OK | os.X_OK)
    if user.uid == 0:
        return True
    st = path.stat()
    if st.st_uid == user.uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in user.gids:
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    return st.st_mode & need == need
