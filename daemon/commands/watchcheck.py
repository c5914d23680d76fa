"""Will inotify see what is dropped into the inbox? `imgtrain doctor`'s watch check.

On NFS and SMB mounts inotify sees nothing written by other machines, so the
check names the filesystem, and proves the point by watching a test file
being written in the inbox itself.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

INOTIFY_WAIT_SECONDS = 3.0  # a local filesystem reports a write within milliseconds


def filesystem(path: Path) -> tuple[str, str]:
    import psutil

    real = str(path.resolve())
    best = ("unknown", "/")
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint
        inside = real == mount or real.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best[1]):
            best = (part.fstype, mount)
    return best


def inotify_sees(inbox: Path) -> tuple[bool, str]:
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
