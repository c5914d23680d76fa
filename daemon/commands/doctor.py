"""`imgtrain doctor`: checks the setup, one line each, OK / WARN / FAIL.

A FAIL is something that stops the daemon from working (exit code 1); a
WARN is something a person should know (a daemon that is not running, a
network inbox without polling, little free disk). A check that needs what an
earlier one found missing says it was skipped instead of failing twice.
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.text import Text

from daemon.commands import access, context, render, watchcheck
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
        user = access.daemon_user(status, config)
        for name, path in (
            ("inbox_dir", config.inbox_dir),
            ("data_dir", config.data_dir),
            ("status_dir", config.status_dir),
        ):
            self._directory(name, path, user)
        self._inbox_watch(config)
        self._access(config, user)
        self._ledger(config)
        clip, faces = self._devices_and_models(config)
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
    def _directory(self, name: str, path: Path, user: access.DaemonUser) -> None:
        who = f"{user.name} ({user.source})"
        if path.is_dir():
            if access.writable_by(path, user):
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
        if access.writable_by(parent, user):
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
        fstype, mount = watchcheck.filesystem(inbox)
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
        seen, why = watchcheck.inotify_sees(inbox)
        if seen:
            self.add("inbox watch", Level.OK, f"inotify works on {inbox} ({fstype})")
        else:
            self.add(
                "inbox watch",
                Level.WARN,
                f"inotify did not report a test file in {inbox} ({fstype}): {why}"
                " -> set inbox.polling: true",
            )

    def _access(self, config: Config, user: access.DaemonUser) -> None:
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
            ledger = context.open_ledger(config)
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

    # -- device, models and store ---------------------------------------------------------
    def _devices_and_models(self, config: Config) -> tuple[Any, Any]:
        """The models (when loading them), and one line on where they and decoding run."""
        from daemon.commands.device_check import device_check
        from daemon.models.device import resolve_device

        try:
            device = resolve_device(config.device)
        except ImgtrainError as exc:
            self.add("device", Level.FAIL, f"{exc.code}: {exc.message} -> {exc.hint}")
            if self.load_models:  # they would fail with the same error
                for name in ("CLIP model", "face models"):
                    self.add(name, Level.WARN, "skipped: the device is unavailable (see device)")
            return None, None
        clip, faces = self._models(config) if self.load_models else (None, None)
        level, detail = device_check(config, device, clip, faces)
        self.add("device", Level(level), detail)
        return clip, faces

    def _models(self, config: Config) -> tuple[Any, Any]:
        from daemon.models import ModelRegistry
        from daemon.models.inventory import MISSING, fix_missing, locate

        missing = [e for e in locate(config) if e.state == MISSING]  # never downloads
        registry = ModelRegistry(config)
        loaded: list[Any] = []
        for name, phase, make, role in (
            ("CLIP model", "embedding", registry.clip, "CLIP"),
            ("face models", "faces", registry.faces, "face"),
        ):
            gone = [e for e in missing if e.role.startswith(role)]
            if phase not in config.phases or gone:
                if gone:
                    self.add(name, Level.FAIL, fix_missing(gone, self.config_path))
                loaded.append(None)
            else:
                loaded.append(self._load(name, make))
        return loaded[0], loaded[1]

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
