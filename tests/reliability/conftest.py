"""Shared tools of the reliability suite, built on the e2e harness.

`Daemon` comes from `tests/e2e/conftest.py`, `wait_for` from `tests/helpers.py`;
this adds what only these tests need: reading the ledger from outside while
the daemon writes it, fingerprints of every original file, a daemon whose
file permissions bite even when the tests run as root, and small tmpfs
mounts for the disk-full tests.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, base_config
from tests.e2e.conftest import Daemon

__all__ = ["REPO", "Daemon", "LedgerProbe", "RootlessDaemon", "file_states"]

PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2


def ready(status: dict[str, Any]) -> bool:
    """Models loaded and nothing to do: the daemon says `Idle: watching ...`."""
    return status["status"] == "idle" and status["message"].startswith("Idle")


class LedgerProbe:
    """Reads the daemon's SQLite ledger from the test while the daemon runs. Never writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self._conn is None:
            if not self.path.exists():
                return []
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA query_only=1")
            conn.row_factory = sqlite3.Row
            self._conn = conn
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # the daemon has not created the schema yet
                return []
            raise

    def value(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def batch_names(self) -> dict[int, str]:
        return {r["batch_id"]: r["name"] for r in self.rows("SELECT batch_id, name FROM batches")}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


FileState = tuple[Any, ...]


def file_states(root: Path) -> dict[str, FileState]:
    """rel path -> what a user would notice changing, for every entry below `root`.

    Regular files: ("file", sha256, size, mtime_ns, mode). Links: ("link",
    target), never followed. Folders: ("dir", mode). A file the test itself
    cannot read (when not run as root) is fingerprinted by stat alone.
    """
    out: dict[str, FileState] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                out[rel] = ("dir", st.st_mode)
            else:
                try:
                    with open(path, "rb") as fh:
                        digest = hashlib.file_digest(fh, "sha256").hexdigest()
                except PermissionError:
                    digest = None
                out[rel] = ("file", digest, st.st_size, st.st_mtime_ns, st.st_mode)
        # os.walk does not descend into links to folders (followlinks=False).
    return out


# Run as `python -c LAUNCHER -m daemon ...`: drops the capabilities, then execs
# the daemon in the same process (same pid). A fresh single-threaded process
# does it, not a preexec_fn in the test's threaded process.
_DROP_DAC_LAUNCHER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for cap in ({CAP_DAC_OVERRIDE}, {CAP_DAC_READ_SEARCH}):
    if libc.prctl({PR_CAPBSET_DROP}, cap, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


class RootlessDaemon(Daemon):
    """The daemon without the root privilege of ignoring file permissions.

    Tests run as root here; a root daemon could read a file with mode 000.
    When the tests run as root, the daemon is started with CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH dropped from its capability bounding set, so
    permission bits apply to it exactly as to an unprivileged service user;
    as any other user it lacks them already.
    """

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== start {self.starts} (no DAC override)\n".encode())
            full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
            full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
            launcher = ["-c", _DROP_DAC_LAUNCHER] if os.geteuid() == 0 else []
            args = ["-m", "daemon", "--config", str(self.config_path), "run"]
            self.proc = subprocess.Popen(
                [sys.executable, *launcher, *args],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
            )
        return self


@pytest.fixture
def make_daemon(
    tmp_path: Path, tiny_clip_config: Path, face_pack: Path
) -> Iterator[Callable[..., Daemon]]:
    """make_daemon(root=None, rootless=False, **config overrides) -> a Daemon (not started)."""
    made: list[Daemon] = []

    def make(root: Path | None = None, rootless: bool = False, **over: Any) -> Daemon:
        root = root or tmp_path / f"d{len(made)}"
        root.mkdir(parents=True, exist_ok=True)
        cfg = base_config(root, tiny_clip_config, face_pack)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        d = (RootlessDaemon if rootless else Daemon)(root, cfg)
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a size-limited tmpfs at `where`; fails the test (never skips) if it cannot."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(
            f"cannot mount a {size} tmpfs at {where} ({res.stderr.strip() or res.returncode}):"
            " the disk-full tests need a small filesystem of their own, which needs root"
            " (or CAP_SYS_ADMIN); run the suite as root or in a container that allows mount",
            pytrace=False,
        )


def unmount(where: Path) -> None:
    res = subprocess.run(["umount", str(where)], capture_output=True, text=True, check=False)
    if res.returncode != 0:  # something still holds a file open: detach it lazily
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, str], Path]]:
    """tmpfs(name, size) -> a freshly mounted small filesystem under tmp_path."""
    mounted: list[Path] = []

    def mount(name: str, size: str) -> Path:
        where = tmp_path / name
        mount_tmpfs(where, size)
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        unmount(where)


def fill_disk(where: Path) -> Path:
    """Write a file in `where` until the filesystem has no room left; returns it."""
    filler = where / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    block = b"\0" * (64 << 10)
    try:
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == 1:
                    break
                block = block[: len(block) // 2]  # top up the last partial page too
    finally:
        os.close(fd)
    return filler
