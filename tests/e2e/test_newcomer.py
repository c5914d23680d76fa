"""A newcomer's first commands, run as the README shows them: `make run`, `make doctor`.

Each test copies the repository (its tracked files, with their times, so make
sees the virtualenv as up to date) and runs the Makefile's own targets with
VENV pointing at the virtualenv running these tests, `-o` on its imgtrain so
nothing is ever installed into it, and PYTHONPATH on the copy so the daemon
runs the code under test. A first start without internet runs in a network
namespace with no network at all (`unshare -n`), with an empty HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, base_config, make_jpeg, write_config
from tests.e2e.conftest import Daemon, wait_for
from tests.helpers import StatusReader

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

VENV = Path(sys.executable).absolute().parent.parent  # not resolve(): that leaves the venv
IMGTRAIN = VENV / "bin" / "imgtrain"


def _copy_repo(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)  # times kept: pyproject.toml stays older than the venv
    return dest


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    assert IMGTRAIN.is_file(), f"{IMGTRAIN} is missing: run the tests with the project's venv"
    assert shutil.which("make"), "make is missing: apt-get install make"
    return _copy_repo(tmp_path / "imgtrain")


def _env(copy: Path, home: Path | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != "NOTIFY_SOCKET" and not k.startswith(("IMGTRAIN_", "HF_", "XDG_CACHE"))
    }
    env.update(PYTHONPATH=str(copy), PYTHONUNBUFFERED="1")
    if home is not None:
        env["HOME"] = str(home)
    return env


class Make:
    """`make TARGET` in the copy, in its own process group, output in a log."""

    def __init__(self, copy: Path, target: str, *, config: Path | None = None, offline=False):
        self.log_path = copy.parent / f"make-{target}.log"
        cmd = ["make", "-C", str(copy), "-o", str(IMGTRAIN), f"VENV={VENV}", target]
        if config is not None:
            cmd.append(f"CONFIG={config}")
        if offline:
            unshare = shutil.which("unshare")
            assert unshare, "unshare (util-linux) is needed to take the network away"
            cmd = [unshare, "-n", *cmd]
        self.copy = copy
        self.home = copy.parent / "home"
        self.home.mkdir(exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(copy, self.home),
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make did not finish:\n{self.log()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def makes() -> Iterator[list[Make]]:
    started: list[Make] = []
    yield started
    for m in started:
        m.kill()


def _status(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return None


def _wait_status(make: Make, path: Path, want: Any, what: str, timeout: float = 120) -> dict:
    def check() -> dict | None:
        if make.proc.poll() is not None:
            raise AssertionError(f"make exited with {make.proc.returncode}:\n{make.log()[-3000:]}")
        s = _status(path)
        return s if s is not None and want(s) else None

    return wait_for(check, timeout, what)


def _stop(make: Make, status: dict, status_path: Path) -> None:
    """SIGTERM to the daemon, as systemd or Ctrl-C would; make then ends with its exit code."""
    os.kill(status["daemon"]["pid"], signal.SIGTERM)
    assert make.wait(60) == 0, make.log()[-3000:]
    assert _status(status_path)["status"] == "stopped"


def _imgtrain(copy: Path, *argv: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(IMGTRAIN), *argv],
        cwd=copy,
        env=_env(copy, home),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_run_processes_a_dropped_folder(
    repo_copy, makes, tmp_path, tiny_clip_config, tiny_clip_weights, face_pack
) -> None:
    """`make run CONFIG=...` with the shared face models and a CLIP weights file."""
    cfg = base_config(tmp_path / "lib", tiny_clip_config, face_pack)
    cfg["clip"]["pretrained"] = str(tiny_clip_weights)
    config = write_config(tmp_path / "config.yaml", cfg)
    make = Make(repo_copy, "run", config=config)
    makes.append(make)
    status_path = tmp_path / "lib" / "status" / "training_status.json"
    _wait_status(make, status_path, lambda s: s["status"] == "idle", "the daemon to be idle")
    folder = tmp_path / "holiday"
    for i in range(3):
        make_jpeg(folder / f"{i}.jpg", seed=i)
    os.rename(folder, tmp_path / "lib" / "inbox" / "holiday")
    s = _wait_status(
        make,
        status_path,
        lambda s: s["status"] == "idle" and s["queue"]["completed"] == 1,
        "the folder to be completed",
    )
    assert s["last_batch"]["name"] == "holiday" and s["last_batch"]["processed"] == 3
    assert s["last_batch"]["state"] == "completed"
    assert f"{IMGTRAIN} run --config {config}" in make.log()  # the Makefile's own line ran
    _stop(make, s, status_path)


def test_make_doctor_passes_on_a_working_setup(
    repo_copy, makes, tmp_path, tiny_clip_config, tiny_clip_weights, face_pack
) -> None:
    cfg = base_config(tmp_path / "lib", tiny_clip_config, face_pack)
    cfg["clip"]["pretrained"] = str(tiny_clip_weights)
    config = write_config(tmp_path / "config.yaml", cfg)
    make = Make(repo_copy, "doctor", config=config)
    makes.append(make)
    code = make.wait(300)
    out = make.log()
    assert code == 0, out
    assert f"{IMGTRAIN} doctor --config {config}" in out
    assert "OK    CLIP model" in out and "imgtrain-tiny/tiny.pt, dim 32" in out
    assert "OK    face models" in out and "dim 128" in out
    assert "0 FAIL" in out


def test_first_make_run_without_internet_says_what_to_do(repo_copy, makes, tmp_path) -> None:
    """The shipped config.yaml, an empty HOME, and no network: a calm error, still watching."""
    make = Make(repo_copy, "run", offline=True)
    makes.append(make)
    status_path = repo_copy / "status" / "training_status.json"
    s = _wait_status(
        make, status_path, lambda s: s["status"] == "error", "MODEL_UNAVAILABLE", timeout=60
    )
    err = s["error"]
    assert err["code"] == "MODEL_UNAVAILABLE"
    assert err["message"].startswith("3 models missing: CLIP ViT-B-32/laion2b_s34b_b79k")
    for name in ("buffalo_l/det_10g.onnx", "buffalo_l/w600k_r50.onnx", "huggingface.co"):
        assert name in err["message"]
    assert f"{repo_copy}/models/clip/ViT-B-32/" in err["message"]
    assert f"{make.home}/.insightface/models/buffalo_l" in err["message"]
    # The exact commands, as this person runs imgtrain (make runs the venv's).
    assert f"`{IMGTRAIN} models import PATH`" in err["hint"]
    assert f"`{IMGTRAIN} models download`" in err["hint"]

    shown = _imgtrain(repo_copy, "status", home=make.home)
    assert shown.returncode == 0, shown.stderr
    assert "MODEL_UNAVAILABLE: 3 models missing" in shown.stdout
    assert "models import PATH" in shown.stdout

    folder = tmp_path / "first"
    make_jpeg(folder / "a.jpg", seed=1)
    os.rename(folder, repo_copy / "inbox" / "first")
    s = _wait_status(
        make, status_path, lambda s: s["queue"]["waiting"] == 1, "the folder to be queued"
    )
    assert s["status"] == "error"  # still saying what is wrong, still watching
    _stop(make, s, status_path)


def test_folders_wait_for_missing_models_and_run_once_they_are_imported(
    daemon_factory, tmp_path, tiny_clip_weights, face_pack
) -> None:
    weights = tmp_path / "weights" / "tiny.pt"
    root = tmp_path / "insightface"
    d: Daemon = daemon_factory(
        clip={"pretrained": str(weights)},
        faces={"model_dir": None, "model_root": str(root), "model_pack": "testpack"},
        models={"retry_seconds": 3600},  # only the import's SIGHUP can make it retry in time
    )
    d.start()
    reader = StatusReader(d.status_path).start()  # every write, checked for contradictions
    s = d.wait_status(lambda s: s["status"] == "error", 90, "MODEL_UNAVAILABLE")
    assert s["error"]["message"].startswith("3 models missing")
    assert str(weights) in s["error"]["message"] and "testpack" in s["error"]["message"]
    folder = tmp_path / "early"
    make_jpeg(folder / "a.jpg", seed=3)
    make_jpeg(folder / "b.jpg", seed=4)
    os.rename(folder, d.inbox / "early")
    s = d.wait_status(lambda s: s["queue"]["waiting"] == 1, 30, "the folder to be queued")
    # The work is known, but not when it can start: no ETA until the models are there.
    assert s["run"]["images_total"] == 2 and s["overall_progress"]["eta_seconds"] is None

    pack_zip = tmp_path / "testpack.zip"
    with zipfile.ZipFile(pack_zip, "w") as zf:
        for f in sorted(face_pack.iterdir()):
            zf.write(f.resolve(), f"testpack/{f.name}")
    for source in (tiny_clip_weights, pack_zip):
        done = subprocess.run(
            [sys.executable, "-m", "daemon", "models", "import", str(source)],
            cwd=REPO,
            env={**os.environ, "IMGTRAIN_CONFIG": str(d.config_path)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert f"Told the running daemon (pid {d.proc.pid})" in done.stdout
    s = d.wait_idle_with(completed=1, timeout=120)
    assert s["last_batch"]["name"] == "early" and s["last_batch"]["processed"] == 2
    assert d.terminate() == 0
    reader.stop()
