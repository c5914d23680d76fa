"""A real daemon as a subprocess, photo drops into its inbox, and a close reader of its status.

The reader polls the status file every few milliseconds, as a dashboard
would, and keeps every distinct snapshot with the monotonic time it was first
seen; drop times use the same clock. Drops are folders staged beside the
inbox (hard links to the photos, so nothing is copied) and renamed into it in
one step, which is how a settled folder arrives.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
POLL = 0.005  # seconds between status reads


@dataclass
class Seen:
    at: float  # time.monotonic() when this content was first read
    status: dict[str, Any]


class StatusWatcher:
    """Reads the status file in a loop; keeps each distinct snapshot once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: list[Seen] = []
        self.errors = 0
        self._raw = b""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="status-watcher", daemon=True)

    def start(self) -> StatusWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(POLL):
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                continue
            if raw == self._raw:
                continue
            now = time.monotonic()
            self._raw = raw
            try:
                status = json.loads(raw)
            except ValueError:
                self.errors += 1  # a torn read: the atomic writer should make this impossible
                continue
            with self._lock:
                self.seen.append(Seen(now, status))

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return self.seen[-1].status if self.seen else None

    def since(self, t0: float) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.at >= t0]

    def first(self, t0: float, predicate: Callable[[dict[str, Any]], bool]) -> Seen | None:
        return next((s for s in self.since(t0) if predicate(s.status)), None)


class Daemon:
    """`python -m daemon run` on a config of its own, in `root`."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "config.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.config = config
        self.inbox = Path(config["inbox_dir"])
        self.staging = root / "staging"
        self.status_path = Path(config["status_dir"]) / "training_status.json"
        self.log_path = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.watcher = StatusWatcher(self.status_path)
        self.settle = float(config.get("inbox", {}).get("settle_seconds", 5.0))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 300) -> float:
        """Start and wait until the models are loaded and it is idle; returns seconds taken."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "daemon", "--config", str(self.config_path), "run"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self.watcher.start()
        self.wait(
            lambda s: (
                s["daemon"]["pid"] == self.pid
                and s["status"] == "idle"
                and s["message"].startswith("Idle")
            ),
            timeout,
            "the daemon to load its models and go idle",
        )
        return time.monotonic() - t0

    def wait(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}):\n{self.tail()}")
            s = self.watcher.latest()
            if s is not None and predicate(s):
                return s
            time.sleep(0.01)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stage(self, name: str, photos: list[Path]) -> Path:
        """A folder of the photos beside the inbox (hard links; copies across filesystems)."""
        folder = self.staging / name
        folder.mkdir(parents=True)
        for p in photos:
            try:
                os.link(p, folder / p.name)
            except OSError as exc:
                # Only across filesystems: copying over an existing name would write
                # through its hard link into the cached original.
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(p, folder / p.name)
        return folder

    def drop(self, folder: Path) -> float:
        """Move a staged folder into the inbox in one rename; returns the monotonic time."""
        t = time.monotonic()
        os.rename(folder, self.inbox / folder.name)
        return t

    def run_batch(self, name: str, photos: list[Path], timeout: float = 900) -> Drop:
        """Drop a folder and wait until the status says its batch completed."""
        folder = self.stage(name, photos)
        t_drop = self.drop(folder)
        self.wait(
            lambda s: (
                (s.get("last_batch") or {}).get("name") == name
                and s["last_batch"]["state"] in ("completed", "failed", "cancelled")
            ),
            timeout,
            f"batch {name} to finish",
        )
        return Drop.observe(self, name, t_drop, len(photos))

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.pid).memory_info().rss

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process ever had."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system + t.children_user + t.children_system

    def stop(self, timeout: float = 60) -> int:
        self.watcher.stop()
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(timeout=10)
        return self.proc.returncode


@dataclass
class Drop:
    """What the status file showed about one dropped folder."""

    name: str
    photos: int
    dropped: float  # monotonic
    picked: float | None  # first status naming the batch as current
    done: float  # first status with the batch finished
    state: str
    settle: float
    busy: list[Seen]  # snapshots between pick-up and done with status == training
    last_batch: dict[str, Any]

    @classmethod
    def observe(cls, daemon: Daemon, name: str, t_drop: float, photos: int) -> Drop:
        seen = daemon.watcher.since(t_drop)
        picked = next((s.at for s in seen if s.status.get("current_file") == name), None)
        done = next(
            s
            for s in seen
            if (s.status.get("last_batch") or {}).get("name") == name
            and s.status["last_batch"]["state"] in ("completed", "failed", "cancelled")
        )
        busy = [
            s
            for s in seen
            if picked is not None and picked <= s.at <= done.at and s.status["status"] == "training"
        ]
        return cls(
            name=name,
            photos=photos,
            dropped=t_drop,
            picked=picked,
            done=done.at,
            state=done.status["last_batch"]["state"],
            settle=daemon.settle,
            busy=busy,
            last_batch=done.status["last_batch"],
        )

    @property
    def seconds(self) -> float:
        return self.done - self.dropped

    @property
    def rate(self) -> float:
        return self.photos / self.seconds

    @property
    def pickup_beyond_settle(self) -> float | None:
        return None if self.picked is None else self.picked - self.dropped - self.settle

    def status_gaps(self) -> list[float]:
        """Seconds between successive distinct updated_at values while training."""
        stamps = sorted({datetime.fromisoformat(s.status["updated_at"]) for s in self.busy})
        return [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]

    def writes_per_second(self) -> float:
        stamps = {s.status["updated_at"] for s in self.busy}
        span = (self.busy[-1].at - self.busy[0].at) if len(self.busy) > 1 else 0.0
        return (len(stamps) - 1) / span if span > 0 else float("nan")
