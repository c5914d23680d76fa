"""Watchdog's side of the inbox: which events count, whose they are, and the observer.

Watchdog callbacks only note which top-level inbox entry an event was under;
everything else happens on the inbox's scanner thread (watch.py), so a burst
of inotify events costs nothing. Also here: the layout check that refuses an
inbox that could not work (data inside it, or on another filesystem).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from daemon.config import Config, InboxConfig
from daemon.errors import ConfigError

log = logging.getLogger("imgtrain.inbox")

# Only events that mean "something was written": opening or reading files
# (our own hashing included) must not look like activity.
WRITE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileClosedEvent,
]


def check_layout(config: Config, inbox: Path) -> None:
    """Create the inbox and batches folders, refusing layouts that cannot work."""
    for key in ("data_dir", "status_dir"):
        own = Path(getattr(config, key))
        if own.resolve().is_relative_to(inbox.resolve()):
            raise ConfigError(
                f"{key} ({own}) is inside inbox_dir ({inbox}): the daemon would claim its own"
                " files as photos",
                hint=f"Move {key} out of the inbox.",
            )
    inbox.mkdir(parents=True, exist_ok=True)
    config.batches_dir.mkdir(parents=True, exist_ok=True)
    if os.stat(inbox).st_dev != os.stat(config.batches_dir).st_dev:
        raise ConfigError(
            f"inbox_dir ({inbox}) and data_dir ({config.data_dir}) are on different"
            " filesystems: claiming moves each dropped folder with one rename, which only"
            " works within one filesystem",
            hint="Put data_dir on the same filesystem (or network share) as inbox_dir.",
        )


class _Events(FileSystemEventHandler):
    """Runs on watchdog's thread: note the top-level entry, nothing else."""

    def __init__(self, root: Path, note: Callable[[str], None]) -> None:
        self._prefix = os.fspath(root) + os.sep
        self._note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, event.dest_path):
            path = os.fsdecode(raw) if raw else ""
            if path.startswith(self._prefix):
                name = path[len(self._prefix) :].split(os.sep, 1)[0]
                if name:
                    self._note(name)


def start_observer(root: Path, cfg: InboxConfig, note: Callable[[str], None]) -> BaseObserver:
    """inotify where it works; watchdog's polling observer on NFS/SMB or when asked."""
    handler = _Events(root, note)
    if not cfg.polling:
        try:
            return _watch(Observer(), root, handler)
        except OSError as exc:  # usually fs.inotify.max_user_watches or _instances
            log.warning("inotify unavailable (%s); polling %s instead", exc, root)
    poll = max(1.0, cfg.scan_interval_seconds)
    return _watch(PollingObserver(timeout=poll), root, handler)


def _watch(observer: BaseObserver, root: Path, handler: _Events) -> BaseObserver:
    observer.schedule(handler, str(root), recursive=True, event_filter=WRITE_EVENTS)
    observer.start()
    return observer
