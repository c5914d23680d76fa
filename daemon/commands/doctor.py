"""`imgtrain doctor`: checks the setup, one line each, OK / WARN / FAIL.

A FAIL is something that stops the daemon from working (exit code 1); a
WARN is something a person should know (a daemon that is not running, a
network inbox without polling, little free disk). A check that needs what an
earlier one found missing says it was skipped instead of failing twice.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import socket
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.text import Text

from daemon.commands import access, render
from daemon.config import Config, load_config, resolve_config_path
from daemon.errors import ConfigError, ImgtrainError

# Filesystems where inotify does not see changes made by other machines.
NETWORK_FS = frozenset(
    (
        *("nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "ncpfs", "afs", "9p", "ceph"),
        *("glusterfs", "sshfs", "davfs", "lustre", "gpfs", "beegfs", "virtiofs", "vboxsf"),
    )
)
DISK_FAIL_BYTES = 512 * 2**20  # below this the daemon will soon hit DISK_FULL
DISK_WARN_BYTES = 5 * 2**30
INOTIFY_WAIT_SECONDS = 3.0


class Level(StrEnum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    check: str  # what was checked (the JSON output's field name)
    level: Level
    detail: str
    seconds: float | None = None


@dataclass
class DaemonUser:
    """Whose permissions matter: the running daemon's, else the person running doctor."""

    uid: int
    gids: set[int]
    name: str
    source: str


@dataclass
class Doctor:
    config_path: Path
    load_models: bool = True
    results: list[Check] = field(default_factory=list)

    def add(self, name: str, level: Level, detail: str, seconds: float | None = None) -> None:
        self.results.append(Check(name, level, detail, seconds))

    def run(self) -> list[Check]:
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            self.add("config", Level.FAIL, f"{exc.message} -> {exc.hint}")
            return self.results
        self.add("config", Level.OK, f"{self.config_path} is valid")
        # The status file says whose permissions count, so it is read first
        # and reported last, where a person looks for "is it running".
        status, status_checks = self._status(config)
        user = _daemon_user(status, config)
        for name, path in (
            ("inbox_dir", config.inbox_dir),
            ("data_dir", config.data_dir),
            ("status_dir", config.status_dir),
        ):
            self._directory(name, path, user)
        self._inbox_watch(config)
        self._access(config, user)
        self._ledger(config)
        clip, faces = self._models(config) if self.load_models else (None, None)
        self._store(config, clip, faces)
        self._disk(config)
        self.results.extend(status_checks)
        return self.results

    # -- status file -------------------------------------------------------------------
    def _status(self, config: Config) -> tuple[Any, list[Check]]:
        """The live status (None if the daemon is not running) and the checks to report."""
        from daemon.status.reader import liveness, read_status

        try:
            status, _ = read_status(config)
        except ImgtrainError as exc:
            level = Level.WARN if exc.code == "NOT_FOUND" else Level.FAIL
            return None, [Check("status file", level, f"{exc.message} -> {exc.hint}")]
        live = liveness(status, config)
        if not live.running:
            return None, [
                Check(
                    "status file",
                    Level.WARN,
                    f"the daemon is not running: {live.reason} -> start it with"
                    " `systemctl start imgtrain` or `imgtrain run`",
                )
            ]
        checks = [
            Check(
                "status file",
                Level.OK,
                f"fresh ({render.duration(live.age_seconds)} old); daemon {live.reason} is"
                f" {status.status.value}",
            )
        ]
        if status.error is not None:
            err = status.error
            checks.append(
                Check("daemon error", Level.FAIL, f"{err.code}: {err.message} -> {err.hint}")
            )
        return status, checks

    # -- directories -------------------------------------------------------------------
    def _directory(self, name: str, path: Path, user: DaemonUser) -> None:
        who = f"{user.name} ({user.source})"
        if path.is_dir():
            if _writable_by(path, user):
                self.add(name, Level.OK, f"{path} exists and is writable by {who}")
            else:
                self.add(
                    name,
                    Level.FAIL,
                    f"{path} is not writable by {who} -> chown/chmod it so {user.name} can write",
                )
            return
        if path.exists():
            self.add(name, Level.FAIL, f"{path} exists but is not a directory")
            return
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if _writable_by(parent, user):
            self.add(name, Level.WARN, f"{path} does not exist yet; the daemon creates it on start")
        else:
            self.add(
                name,
                Level.FAIL,
                f"{path} does not exist and {who} cannot create it in {parent}"
                f" -> mkdir -p {path} && chown {user.name} {path}",
            )

    def _inbox_watch(self, config: Config) -> None:
        inbox = config.inbox_dir
        if not inbox.is_dir():
            self.add("inbox watch", Level.WARN, "skipped: the inbox does not exist yet")
            return
        fstype, mount = _filesystem(inbox)
        if config.inbox.polling:
            self.add(
                "inbox watch",
                Level.OK,
                f"polling every {config.inbox.scan_interval_seconds:g} s (inbox.polling: true);"
                f" {inbox} is on {fstype} ({mount})",
            )
            return
        if fstype in NETWORK_FS or fstype.startswith("fuse."):
            self.add(
                "inbox watch",
                Level.WARN,
                f"{inbox} is on {fstype} ({mount}): inotify misses files other machines write"
                " there -> set inbox.polling: true",
            )
            return
        seen, why = _inotify_sees(inbox)
        if seen:
            self.add("inbox watch", Level.OK, f"inotify works on {inbox} ({fstype})")
        else:
            self.add(
                "inbox watch",
                Level.WARN,
                f"inotify did not report a test file in {inbox} ({fstype}): {why}"
                " -> set inbox.polling: true",
            )

    def _access(self, config: Config, user: DaemonUser) -> None:
        found = access.problems(config, user.uid, user.name)
        if found:
            self.add("access", Level.WARN, "; ".join(found))
        else:
            self.add(
                "access",
                Level.OK,
                f"the inbox is not writable by every user; only {user.name} writes data_dir"
                " and status_dir",
            )
        fine, detail = access.link_roots_note(config)
        self.add("link roots", Level.OK if fine else Level.WARN, detail)

    def _disk(self, config: Config) -> None:
        import psutil

        seen: set[int] = set()
        for name, path in (("data_dir", config.data_dir), ("status_dir", config.status_dir)):
            existing = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
            dev = existing.stat().st_dev
            if dev in seen:
                continue
            seen.add(dev)
            free = psutil.disk_usage(str(existing)).free
            text = f"{render.size(free)} free on the disk holding {name} ({existing})"
            if free < DISK_FAIL_BYTES:
                self.add("disk", Level.FAIL, text + " -> free some space")
            elif free < DISK_WARN_BYTES:
                self.add("disk", Level.WARN, text)
            else:
                self.add("disk", Level.OK, text)

    def _ledger(self, config: Config) -> None:
        path = config.ledger_path
        if not path.exists():
            self.add("ledger", Level.WARN, f"{path} does not exist yet; the daemon creates it")
            return
        try:
            ledger = render.open_ledger(config)
            check = ledger.db.integrity()
            counts = ledger.queue_counts()
            paused = ledger.is_paused()
            ledger.close()
        except (sqlite3.DatabaseError, OSError) as exc:
            self.add("ledger", Level.FAIL, f"{path} cannot be read: {exc}")
            return
        if check != "ok":
            self.add("ledger", Level.FAIL, f"{path} is damaged: {check}")
            return
        listed = ", ".join(f"{n} {s}" for s, n in counts.items() if n) or "no batches"
        self.add("ledger", Level.OK, f"{path}: {listed}")
        if paused:
            self.add("queue", Level.WARN, "the queue is paused -> `imgtrain queue resume`")

    # -- models and store ----------------------------------------------------------------
    def _models(self, config: Config) -> tuple[Any, Any]:
        from daemon.models import ModelRegistry

        registry = ModelRegistry(config)
        clip = self._load("CLIP model", registry.clip) if "embedding" in config.phases else None
        faces = self._load("face models", registry.faces) if "faces" in config.phases else None
        return clip, faces

    def _load(self, name: str, make: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            model = make()
            model.load()
        except ImgtrainError as exc:
            self.add(name, Level.FAIL, f"{exc.code}: {exc.message} -> {exc.hint}")
            return None
        seconds = round(time.perf_counter() - t0, 3)
        random = bool(getattr(model, "random_weights", False))
        note = "; RANDOM WEIGHTS: search is meaningless" if random else ""
        self.add(
            name,
            Level.WARN if random else Level.OK,
            f"{model.model_name}, dim {model.dim}, loaded in {render.duration(seconds)}{note}",
            seconds,
        )
        return model

    def _store(self, config: Config, clip: Any, faces: Any) -> None:
        from daemon.store.chroma import Store
        from daemon.store.library import bound_to_model

        if not config.store.url and not config.chroma_path.exists():
            self.add(
                "chromadb",
                Level.OK,
                f"{config.chroma_path} not created yet (the daemon creates it)",
            )
            return
        try:
            store = Store(config)
        except ImgtrainError as exc:
            self.add("chromadb", Level.FAIL, f"{exc.code}: {exc.message} -> {exc.hint}")
            return
        self.add("chromadb", Level.OK, f"opens at {store.where}")
        open_images, count_images = bound_to_model(store, config, clip)
        for label, model, opener, count in (
            ("images collection", clip, open_images, count_images),
            ("faces collection", faces, store.open_faces, store.count_faces),
        ):
            if model is None:
                if self.load_models:  # the model check above already failed
                    self.add(label, Level.WARN, "model and dimension not checked: no model")
                else:
                    self.add(label, Level.OK, f"{count()} vectors (model check: --no-models)")
                continue
            try:
                exists = opener(model.model_name, model.dim, create=False)
            except ImgtrainError as exc:
                self.add(label, Level.FAIL, f"{exc.code}: {exc.message} -> {exc.hint}")
                continue
            if not exists:
                self.add(label, Level.OK, "not created yet (the first batch creates it)")
                continue
            self.add(
                label,
                Level.OK,
                f"{count()} vectors of {model.model_name}, dim {model.dim}, as configured",
            )


# -- helpers -------------------------------------------------------------------------
def _daemon_user(status: Any, config: Config) -> DaemonUser:
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


def _writable_by(path: Path, user: DaemonUser) -> bool:
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


def _filesystem(path: Path) -> tuple[str, str]:
    import psutil

    real = str(path.resolve())
    best = ("unknown", "/")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (part.fstype, mount)
    return best


def _inotify_sees(inbox: Path) -> tuple[bool, str]:
    """Watch the inbox with inotify and create a hidden file (the daemon ignores dotfiles)."""
    try:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver
    except ImportError as exc:
        return False, f"inotify is not available here ({exc})"

    seen = threading.Event()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if os.path.basename(str(event.src_path)).startswith(".imgtrain-doctor-"):
                seen.set()

    observer = InotifyObserver()
    try:
        observer.schedule(Handler(), str(inbox), recursive=False)
        observer.start()
    except OSError as exc:
        return False, str(exc)
    try:
        fd, name = tempfile.mkstemp(prefix=".imgtrain-doctor-", dir=inbox)
        os.close(fd)
        os.unlink(name)
        ok = seen.wait(INOTIFY_WAIT_SECONDS)
    except OSError as exc:
        return False, f"cannot write a test file: {exc}"
    finally:
        observer.stop()
        observer.join(timeout=5)
    return ok, "" if ok else f"no event within {INOTIFY_WAIT_SECONDS:g} s"


# -- the command -----------------------------------------------------------------------
def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check the setup: config, directories, models, store")
    render.add_json_flag(p)
    p.add_argument("--no-models", action="store_true", help="skip loading the models (faster)")
    p.set_defaults(func=run)


STYLE = {Level.OK: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}


def run(args: argparse.Namespace) -> int:
    render.quiet_logs()
    doctor = Doctor(resolve_config_path(args.config), load_models=not args.no_models)
    results = doctor.run()
    failed = any(c.level == Level.FAIL for c in results)
    if args.json:
        render.print_json({"ok": not failed, "checks": results})
        return 1 if failed else 0
    out = render.console()
    width = max(len(c.check) for c in results)
    for c in results:
        out.print(
            Text.assemble(
                (f"{c.level.value:<4}", STYLE[c.level]), f"  {c.check:<{width}}  {c.detail}"
            )
        )
    counts = {lvl: sum(c.level == lvl for c in results) for lvl in Level}
    out.print(f"{counts[Level.OK]} OK, {counts[Level.WARN]} WARN, {counts[Level.FAIL]} FAIL")
    return 1 if failed else 0
