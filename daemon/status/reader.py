"""Reading the status file, and judging whether the daemon that wrote it still runs.

The file is the only source: readers never ask the daemon anything, so the
answer is the same whether it runs or not. A file not rewritten for
`status.stale_after_seconds`, a pid that is gone (or reused), or `stopped`
all mean the daemon is not running. `imgtrain status`, `doctor` and `queue`
share these rules.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError

from daemon import humanize
from daemon.config import Config
from daemon.errors import InvalidState, NotFound
from daemon.status.model import Status
from daemon.vocab import DaemonStatus


def read_status(config: Config) -> tuple[Status, str]:
    """The parsed status file and its exact text."""
    path = config.status_path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(
            f"there is no status file at {path}",
            hint="The daemon has not run with this config: start it (`imgtrain run` or"
            " `systemctl start imgtrain`), or pass its config with --config.",
        ) from None
    try:
        return Status.model_validate_json(text), text
    except ValidationError as exc:
        raise InvalidState(
            f"{path} is not a valid status file: {exc.errors()[0]['msg']}",
            hint="Check that this imgtrain is the version the daemon runs (`imgtrain --version`).",
        ) from exc


@dataclass(frozen=True)
class Liveness:
    running: bool
    reason: str  # why we think so, for a person
    age_seconds: float  # since the file was last written


def liveness(status: Status, config: Config, now: datetime | None = None) -> Liveness:
    import psutil

    now = now or datetime.now(UTC)
    age = max((now - status.updated_at).total_seconds(), 0.0)
    info = status.daemon
    if status.status == DaemonStatus.STOPPED:
        at = humanize.local_time(status.updated_at)
        return Liveness(False, f"it stopped at {at} ({status.message})", age)
    if info.hostname == socket.gethostname():
        gone = not psutil.pid_exists(info.pid)
        if not gone:
            try:
                # A pid reused by a newer process is not our daemon.
                created = psutil.Process(info.pid).create_time()
                gone = created > info.started_at.timestamp() + 5
            except psutil.NoSuchProcess:
                gone = True
            except psutil.AccessDenied:
                pass
        if gone:
            return Liveness(False, f"its process (pid {info.pid}) is gone", age)
    limit = config.status.stale_after_seconds
    if age > limit:
        return Liveness(
            False,
            f"the status file was last written {humanize.duration(age)} ago"
            f" (status.stale_after_seconds is {limit:g})",
            age,
        )
    return Liveness(True, f"pid {info.pid} on {info.hostname}", age)
