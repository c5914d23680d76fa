"""The systemd unit's own ExecStart= line, with its Environment= settings, reaches READY.

The unit's paths are rewritten into a temporary directory, as the README's
install steps would place them, and everything else is taken from the unit
as shipped: the command line, the environment, the working directory and the
watchdog interval. systemd's side of the notify protocol is a real
AF_UNIX datagram socket, as in `Type=notify`.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, base_config, write_config
from tests.e2e.conftest import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

UNIT = REPO / "systemd" / "imgtrain.service"


def _service_settings(text: str) -> list[tuple[str, str]]:
    section, out = "", []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line:
            key, value = line.split("=", 1)
            out.append((key.strip(), value.strip()))
    return out


def _installed(text: str, root: Path) -> str:
    """The unit's paths moved under `root`; the venv is the one running these tests."""
    venv = Path(sys.executable).absolute().parent.parent
    for old, new in (
        ("/opt/imgtrain/.venv", str(venv)),
        ("/opt/imgtrain", str(REPO)),
        ("/etc/imgtrain", str(root / "etc")),
        ("/var/lib/imgtrain", str(root / "lib")),
        ("/var/cache/imgtrain", str(root / "cache")),
        ("/srv/imgtrain", str(root / "srv")),
    ):
        text = text.replace(old, new)
    return text


def _environment(settings: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for key, value in settings:
        if key == "Environment":
            for assignment in shlex.split(value):
                name, _, val = assignment.partition("=")
                env[name] = val
    return env


def _seconds(value: str) -> int:
    return int(value[:-1]) * 60 if value.endswith("min") else int(value.rstrip("s"))


def _messages(sock: socket.socket) -> list[dict[str, str]]:
    got = []
    while True:
        try:
            data = sock.recv(4096).decode()
        except BlockingIOError:
            return got
        got.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))


def test_exec_start_with_the_units_environment_reaches_ready_and_stops_cleanly(
    tmp_path, tiny_clip_config, tiny_clip_weights, face_pack
) -> None:
    settings = _service_settings(_installed(UNIT.read_text(), tmp_path))
    values = dict(settings)
    env = _environment(settings)
    config_path = Path(env["IMGTRAIN_CONFIG"])
    assert config_path.is_relative_to(tmp_path), "the unit's config must be under /etc/imgtrain"
    cfg = base_config(tmp_path / "lib", tiny_clip_config, face_pack)
    cfg["clip"]["pretrained"] = str(tiny_clip_weights)
    cfg["inbox_dir"] = str(tmp_path / "srv" / "inbox")
    config_path.parent.mkdir(parents=True)
    write_config(config_path, cfg)

    argv = shlex.split(values["ExecStart"].lstrip("-@:+!"))
    assert Path(argv[0]).is_file(), f"ExecStart= runs {argv[0]}, which does not exist"
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.setblocking(False)
    # What systemd gives the service: a plain PATH, the unit's Environment=, HOME of
    # its user, the notify socket, and the watchdog interval from WatchdogSec=.
    full_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(tmp_path / "lib"),
        **env,
        "NOTIFY_SOCKET": str(notify),
        "WATCHDOG_USEC": str(_seconds(values["WatchdogSec"]) * 1_000_000),
        "PYTHONPATH": str(REPO),  # the code under test, wherever the venv was installed from
    }
    with (tmp_path / "journal.log").open("wb") as journal:
        proc = subprocess.Popen(
            argv, cwd=values["WorkingDirectory"], env=full_env, stdout=journal, stderr=journal
        )
    got: list[dict[str, str]] = []
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "journal.log").read_text()
            got.extend(_messages(sock))
            return any(m.get("READY") == "1" for m in got)

        wait_for(ready, 120, "READY=1 on the notify socket")
        first = next(m for m in got if m.get("READY") == "1")
        assert first["MAINPID"] == str(proc.pid)
        assert "watching" in first["STATUS"]
        proc.send_signal(signal.SIGTERM)  # KillMode=mixed: SIGTERM to the main process
        assert proc.wait(timeout=_seconds(values["TimeoutStopSec"])) == 0
        got.extend(_messages(sock))
        assert any(m.get("STOPPING") == "1" for m in got)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()
    log = (tmp_path / "journal.log").read_text()
    assert "watching" in log and os.path.exists(tmp_path / "lib" / "status")
