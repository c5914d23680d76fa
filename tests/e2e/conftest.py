"""End-to-end harness: the real daemon as a subprocess, and a reader of its status file.

The reader polls the status file in a tight loop, as `watch jq` would, and
records every parse failure: the file must be valid JSON at every read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, base_config, write_config
from tests.helpers import read_status_file, wait_for


class Daemon:
    """One daemon directory; start/stop/kill the real `imgtrain run` against it."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config_path = write_config(root / "config.yaml", config)
        self.inbox = Path(config["inbox_dir"])
        self.data = Path(config["data_dir"])
        self.status_path = Path(config["status_dir"]) / "training_status.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "daemon.log"
        self.starts = 0
        self.inbox.mkdir(parents=True, exist_ok=True)

    def start(self, env: dict[str, str] | None = None) -> Daemon:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n==== start {self.starts}\n".encode())
        full_env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "--config", str(self.config_path), "run"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        log.close()
        return self

    def status(self) -> dict[str, Any] | None:
        try:
            return read_status_file(self.status_path)
        except ValueError:
            return None

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            self.assert_alive()
            s = self.status()
            return (
                s
                if s is not None and s["daemon"]["pid"] == self.proc.pid and predicate(s)
                else None
            )

        return wait_for(check, timeout, what)

    def wait_idle_with(self, completed: int, timeout: float = 120) -> dict[str, Any]:
        return self.wait_status(
            lambda s: (
                s["status"] == "idle"
                and s["queue"]["completed"] >= completed
                and s["queue"]["waiting"] == 0
                and s["queue"]["running"] == 0
            ),
            timeout,
            f"idle with {completed} completed batches",
        )

    def assert_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"daemon exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def ledger(self) -> Any:
        from daemon.ledger.ledger import Ledger

        return Ledger(self.data / "ledger.sqlite3")


@pytest.fixture
def daemon_factory(
    tmp_path: Path, tiny_clip_config: Path, face_pack: Path
) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(**over: Any) -> Daemon:
        root = tmp_path / f"d{len(made)}"
        root.mkdir()
        d = Daemon(root, base_config(root, tiny_clip_config, face_pack, **over))
        made.append(d)
        return d

    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=10)
