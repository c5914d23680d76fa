"""The status file: one pydantic model and the only code that writes it.

`status/training_status.json` is what people read with `jq`. It is replaced
atomically (temporary file in the same directory, flush, fsync, os.replace,
fsync of the directory), so a reader sees the old file or the new one, never a
mix. A full disk keeps the previous file intact; the writer says so once in
the log and tries again on the next write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class DaemonStatus(StrEnum):
    IDLE = "idle"
    TRAINING = "training"
    PAUSED = "paused"
    ERROR = "error"
    STOPPED = "stopped"


class PhaseStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseProgress(_Model):
    status: PhaseStatus = Field(description="pending, running, completed, failed or skipped")
    step: int = Field(description="steps of this phase done in the current batch")
    total_steps: int = Field(description="steps this phase has in the current batch")
    percentage: float = Field(description="step / total_steps * 100; 100 only when done")


class Phases(_Model):
    embedding: PhaseProgress
    faces: PhaseProgress
    clustering: PhaseProgress


class OverallProgress(_Model):
    percentage: float | None = Field(
        None, description="share of the run's work done, weighted by measured cost per step"
    )
    eta_seconds: float | None = Field(None, description="estimated seconds until the run ends")
    eta_at: datetime | None = Field(None, description="estimated UTC time the run ends")


class DaemonInfo(_Model):
    pid: int
    version: str
    started_at: datetime
    hostname: str


class QueueCounts(_Model):
    waiting: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    paused: int = Field(0, description="batches held by `imgtrain queue pause`")
    cancelled: int = 0


class LastBatch(_Model):
    batch_id: int
    name: str
    state: str = Field(description="completed, failed or cancelled")
    images: int = Field(description="images in the batch")
    processed: int = Field(description="images processed by every phase")
    duplicates: int = Field(description="images already in the library, not recomputed")
    failed_images: int = Field(description="images skipped with a per-file error")
    faces: int
    seconds: float
    images_per_second: float | None
    finished_at: datetime | None
    error: str | None = None


class ErrorEntry(_Model):
    at: datetime
    code: str
    message: str
    file: str | None = None
    batch_id: int | None = None


class ErrorInfo(_Model):
    code: str
    message: str
    hint: str


class Totals(_Model):
    batches: int = 0
    images: int = 0
    faces: int = 0
    clusters: int = 0
    people: int = 0


class SystemInfo(_Model):
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    disk_free_bytes: int | None = Field(None, description="free bytes on the data directory's disk")


class Status(_Model):
    """The whole status file. Fields keep their meaning; new ones may be added."""

    schema_version: int = SCHEMA_VERSION
    status: DaemonStatus
    message: str = Field(description="one human line saying what is happening now")
    updated_at: datetime
    daemon: DaemonInfo
    error: ErrorInfo | None = Field(None, description="set when status is error")
    current_file: str | None = Field(None, description="the dropped folder's name")
    batch_id: int | None = None
    batch_number: int | None = Field(None, description="position of this batch in the run, 1-based")
    batch_queue_size: int | None = Field(
        None, description="batches in the run: done+current+waiting"
    )
    batch_step: int | None = Field(None, description="steps of the current batch done")
    batch_total_steps: int | None = Field(None, description="steps of the current batch")
    phase: str | None = Field(None, description="the phase running now")
    phases: Phases | None = Field(None, description="per-phase progress of the current batch")
    current_step: int | None = Field(None, description="steps done in the run, all batches")
    total_steps: int | None = Field(None, description="steps in the run; grows when folders arrive")
    overall_progress: OverallProgress = Field(default_factory=OverallProgress)
    throughput: float | None = Field(None, description="images per second, smoothed")
    queue: QueueCounts = Field(default_factory=QueueCounts)
    last_batch: LastBatch | None = None
    errors: list[ErrorEntry] = Field(default_factory=list, description="most recent first")
    totals: Totals = Field(default_factory=Totals)
    system: SystemInfo = Field(default_factory=SystemInfo)


def utcnow() -> datetime:
    return datetime.now(UTC)


def json_schema() -> str:
    return json.dumps(Status.model_json_schema(), indent=2, sort_keys=True) + "\n"


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
    ) -> None:
        self.path = Path(path)
        self._build = build
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
            data = status.model_dump_json(indent=2).encode() + b"\n"
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
