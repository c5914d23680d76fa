"""A reader polling the status file in a tight loop while the daemon works.

The status file is replaced atomically (temporary file, fsync, rename), so a
reader must see the old document or the new one, never a torn or empty
file, and never a missing one. This reader reads and parses on every pass,
with no pause, for at least 10,000 reads made while the daemon is training,
and validates every distinct document against the published model.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pydantic import ValidationError

from daemon.status.model import Status
from tests.conftest import make_jpeg
from tests.e2e.conftest import Daemon
from tests.reliability.conftest import ready

READS_WHILE_WORKING = 10_000
VERSIONS = 20  # distinct documents seen: the reader raced that many rewrites
MAX_ROUNDS = 12


class TightReader:
    """Reads and parses the status file as fast as it can, counting every failure."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reads = 0
        self.reads_while_training = 0
        self.versions = 0
        self.errors: list[str] = []
        self.invalid: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = b""
        while not self._stop.is_set():
            try:
                raw = self.path.read_bytes()
            except FileNotFoundError:
                if self.reads:  # it existed once: a rename must never leave a gap
                    self.errors.append(f"missing after {self.reads} reads")
                continue
            self.reads += 1
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                self.errors.append(f"read {self.reads}: {exc}: {raw[:80]!r}")
                continue
            if doc.get("status") == "training":
                self.reads_while_training += 1
            if raw != last:
                last = raw
                self.versions += 1
                try:
                    Status.model_validate(doc)
                except ValidationError as exc:
                    self.invalid.append(str(exc)[:300])

    def start(self) -> TightReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_tight_reader_never_sees_a_torn_status_file(make_daemon, tmp_path: Path) -> None:
    # Frequent writes (20 a second while busy) give the reader many chances to catch one.
    d: Daemon = make_daemon(
        clip={"batch_size": 2}, status={"busy_interval_seconds": 0.05, "heartbeat_seconds": 0.2}
    )
    d.start()
    d.wait_status(ready, 90, "the daemon to load its models")
    reader = TightReader(d.status_path).start()
    rounds = 0
    try:
        # More folders until the reader has made its reads while the daemon worked.
        while rounds < MAX_ROUNDS and (
            reader.reads_while_training < READS_WHILE_WORKING or reader.versions < VERSIONS
        ):
            rounds += 1
            folder = tmp_path / f"round{rounds}"
            for i in range(24):
                make_jpeg(folder / f"p{i:02d}.jpg", size=(320, 240), seed=1000 * rounds + i)
            folder.rename(d.inbox / folder.name)
            d.wait_idle_with(completed=rounds, timeout=120)
    finally:
        reader.stop()
    print(
        f"{reader.reads} reads, {reader.reads_while_training} while training,"
        f" {reader.versions} versions, {rounds} folders"
    )
    assert reader.errors == [], reader.errors[:5]
    assert reader.invalid == [], reader.invalid[:3]
    assert reader.reads_while_training >= READS_WHILE_WORKING, (
        f"only {reader.reads_while_training} reads while training after {rounds} folders"
    )
    assert reader.versions >= VERSIONS, f"only {reader.versions} rewrites after {rounds} folders"
    assert d.terminate() == 0
