"""Real servers for the tests: `redis-server` (Debian's package) and `chroma run`.

Each listens on a free port on 127.0.0.1 and keeps its files under the test's
directory; output goes to a file (an unread pipe fills up and stalls a
server). Redis runs without persistence (`--save '' --appendonly no`), so a
restart is what a crashed Redis without persistence looks like: empty.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class RedisServer:
    def __init__(self, root: Path, password: str | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.password = password
        self.proc: subprocess.Popen | None = None
        self.log = root / "redis.log"
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: apt-get install redis-server (see README)")
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.root),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ping()
        return self

    def _wait_ping(self, deadline_s: float = 30.0) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(
                    f"redis-server exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                if client.ping():
                    return
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                time.sleep(0.05)
        pytest.fail(f"redis-server on port {self.port} did not answer within {deadline_s}s")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


class ChromaServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = root / "chroma.log"
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ChromaServer:
        chroma = shutil.which("chroma", path=str(Path(sys.executable).parent))
        if chroma is None:
            pytest.fail("the installed chromadb has no `chroma` command beside the interpreter")
        args = [chroma, "run", "--path", str(self.root / "db"), "--host", "127.0.0.1"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                [*args, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"chroma run exited with {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        pytest.fail(f"the Chroma server at {self.url} did not answer its heartbeat within 60s")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def count(self, collection: str) -> int:
        """Records in a collection, read through a fresh client."""
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=Settings(anonymized_telemetry=False)
        )
        try:
            return client.get_collection(collection).count()
        except Exception as exc:  # chromadb's NotFoundError: no such collection yet
            if "does not exist" in str(exc) or "not found" in str(exc).lower():
                return 0
            raise

    def ids(self, collection: str) -> list[str]:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=Settings(anonymized_telemetry=False)
        )
        return list(client.get_collection(collection).get(include=[])["ids"])


class WorkerProc:
    """`imgtrain worker` as a real subprocess, on a config file of its own."""

    def __init__(self, root: Path, config: dict, name: str) -> None:
        import yaml

        self.root = root
        self.name = name
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.queue = config.get("workers", {}).get("queue", "imgtrain")
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> WorkerProc:
        import os

        from tests.conftest import REPO

        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("a") as out:
            self.proc = subprocess.Popen(
                [*self.command, "worker", "--name", self.name],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "daemon", "--config", str(self.config_path)]

    @property
    def key(self) -> str:
        return f"rq:worker:{self.name}"

    def registered(self, client: Any) -> bool:
        self.assert_alive()
        return bool(client.sismember(f"rq:workers:{self.queue}", self.key))

    def busy_job(self, client: Any) -> str | None:
        job = client.hget(self.key, "imgtrain_job")
        return job.decode() if job else None

    def assert_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"worker {self.name} exited with {self.proc.returncode}:\n{self.log()[-3000:]}"
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop(self.proc)
