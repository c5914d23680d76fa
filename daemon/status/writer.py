"""The only code that writes the status file.

`status/training_status.json` is what people read with `jq`. It is replaced
atomically (temporary file in the same directory, flush, fsync, os.replace,
fsync of the directory), so a reader sees the old file or the new one, never a
mix. A full disk keeps the previous file intact; the writer says so once in
the log and tries again on the next write.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from daemon.redact import redact
from daemon.status.model import Status, json_schema

log = logging.getLogger(__name__)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StatusWriter:
    """Writes snapshots from `build` to the status file.

    A background thread writes at least every `busy_interval` while busy and
    every `heartbeat` while idle; `poke()` asks for a prompt write after a
    state change (no sooner than `min_gap`), and `flush()` writes now, in the
    caller's thread, for the states a reader must not miss (completed,
    failed, stopped).
    """

    def __init__(
        self,
        path: Path,
        build: Callable[[], Status],
        *,
        busy: Callable[[], bool],
        busy_interval: float = 1.0,
        heartbeat: float = 10.0,
        min_gap: float = 0.2,
        schema_path: Path | None = None,
        after: Callable[[Status], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._build = build
        self._after = after  # given each snapshot once it is written (the metrics file)
        self._after_failed = False
        self._busy = busy
        self._busy_interval = busy_interval
        self._heartbeat = heartbeat
        self._min_gap = min_gap
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_write = 0.0
        self.writes = 0
        self.write_seconds = 0.0
        self.disk_full = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if schema_path is not None:
            atomic_write(Path(schema_path), json_schema().encode())

    def flush(self) -> bool:
        """Write the current snapshot now. Returns False if the disk was full."""
        with self._lock:
            status = self._build()
            data = redact(status.model_dump_json(indent=2)).encode() + b"\n"
            t0 = time.perf_counter()
            try:
                atomic_write(self.path, data)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                if not self.disk_full:
                    log.error(
                        "status file not updated: disk full (%s); the previous one is intact", exc
                    )
                self.disk_full = True
                return False
            finally:
                self.write_seconds += time.perf_counter() - t0
                self.last_write = time.monotonic()
            if self.disk_full:
                log.info("status file writable again")
            self.disk_full = False
            self.writes += 1
            if self._after is not None:
                try:
                    self._after(status)
                    self._after_failed = False
                except OSError as exc:  # the status file is written; the metrics wait
                    if not self._after_failed:
                        log.warning("metrics file not written (%s); retrying on each write", exc)
                    self._after_failed = True
            return True

    def poke(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="status-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            interval = self._busy_interval if self._busy() else self._heartbeat
            due = self.last_write + interval - time.monotonic()
            poked = self._wake.wait(timeout=max(due, 0.0))
            if self._stop.is_set():
                return
            if poked:
                self._wake.clear()
                gap = self.last_write + self._min_gap - time.monotonic()
                if gap > 0 and self._stop.wait(gap):
                    return
            elif time.monotonic() - self.last_write < interval:
                continue
            try:
                self.flush()
            except Exception:  # the writer thread must outlive a bad snapshot
                log.exception("could not write the status file")
                self._stop.wait(1.0)
