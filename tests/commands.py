"""Running `imgtrain` commands in the test process, as a user runs them in a shell.

Each command a user types is a process of its own. Called in one test process,
they would share chromadb's cached client, whose index in memory does not see
what a daemon wrote since ("Error finding id"); forgetting it before each call
makes each start fresh, as a command does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import pytest

from daemon.cli import main


class HasConfig(Protocol):
    config_path: Path  # a test daemon: tests.e2e.conftest.Daemon


def cli(
    capsys: pytest.CaptureFixture[str], config: Path | HasConfig, *argv: str
) -> tuple[int, str, str]:
    """`imgtrain --config CONFIG ARGV...`: exit code, stdout, stderr."""
    from chromadb.api.shared_system_client import SharedSystemClient

    path = config if isinstance(config, Path) else config.config_path
    SharedSystemClient.clear_system_cache()
    capsys.readouterr()
    code = main(["--config", str(path), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_json(capsys: pytest.CaptureFixture[str], config: Path | HasConfig, *argv: str) -> Any:
    """The command's `--json` output, parsed; it must succeed."""
    code, out, err = cli(capsys, config, *argv, "--json")
    assert code == 0, err
    return json.loads(out)
