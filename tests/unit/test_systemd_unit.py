"""The shipped unit files pass `systemd-analyze verify` once installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

COMMON = (
    "Type=notify",
    "Restart=on-failure",
    "RestartPreventExitStatus=78",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
)
UNITS = {
    "imgtrain.service": (*COMMON, "WatchdogSec=", "ExecReload=", "ReadWritePaths="),
    # A worker writes only its model caches; it runs `imgtrain worker`, secrets from a file.
    "imgtrain-worker.service": (
        *COMMON,
        "ExecStart=/opt/imgtrain/.venv/bin/imgtrain worker",
        "EnvironmentFile=-/etc/imgtrain/worker.env",
        "CacheDirectory=",
    ),
}


@pytest.mark.parametrize("name", sorted(UNITS))
def test_unit_verifies_with_real_paths(tmp_path: Path, name: str) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install systemd")
    unit = (REPO / "systemd" / name).read_text()
    # As the README's install steps do: point the unit at where imgtrain is installed.
    venv_bin = Path(sys.executable).parent
    installed = unit.replace("/opt/imgtrain/.venv/bin", str(venv_bin)).replace(
        "/opt/imgtrain", str(REPO)
    )
    target = tmp_path / name
    target.write_text(installed)
    done = subprocess.run([analyze, "verify", str(target)], capture_output=True, text=True)
    # verify warns about the unknown User= on a machine without the imgtrain user; only
    # errors about the unit itself fail it.
    assert done.returncode == 0, done.stderr
    for key in UNITS[name]:
        assert key in unit, key


@pytest.mark.parametrize("name", sorted(UNITS))
def test_security_exposure_is_low(name: str) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(REPO / "systemd" / name)],
        capture_output=True,
        text=True,
    )
    last = [line for line in done.stdout.splitlines() if "Overall exposure level" in line]
    assert last, done.stdout + done.stderr
    level = float(last[0].split(":")[1].split()[0])
    assert level <= 2.0, last[0]
