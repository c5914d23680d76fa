"""`imgtrain doctor` on real setups: fresh, broken config, missing models, mixed-up store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from daemon.cli import main
from daemon.config import load_config
from daemon.status.model import ErrorInfo
from daemon.status.progress import Progress
from daemon.status.writer import StatusWriter
from daemon.store.chroma import Store
from daemon.vocab import DaemonStatus
from tests.conftest import base_config, write_config


def doctor(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, dict]:
    code = main(["--config", str(cfg), "doctor", "--json", *argv])
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] == (code == 0)
    return code, {c["check"]: c for c in data["checks"]}


def test_a_fresh_setup_passes_and_doctor_creates_nothing(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"inbox_dir": "inbox", "data_dir": "data"})
    code = main(["--config", str(cfg), "doctor", "--no-models"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["OK", "config"]
    assert any(
        x.startswith("WARN") and "inbox_dir" in x and "does not exist yet" in x for x in lines
    )
    assert any(x.startswith("WARN") and "status file" in x and "no status file" in x for x in lines)
    assert lines[-1].endswith("0 FAIL")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_an_invalid_config_fails(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"clip": {"batch_size": 0}})
    code, checks = doctor(capsys, cfg)
    assert code == 1
    assert checks["config"]["level"] == "FAIL"
    assert "clip.batch_size" in checks["config"]["detail"]


def test_inotify_is_checked_on_the_inbox(tmp_path, capsys) -> None:
    (tmp_path / "inbox").mkdir()
    cfg = write_config(tmp_path / "config.yaml", {"inbox_dir": "inbox"})
    _, checks = doctor(capsys, cfg, "--no-models")
    assert checks["inbox watch"]["level"] == "OK"
    assert checks["inbox watch"]["detail"].startswith(f"inotify works on {tmp_path / 'inbox'}")
    assert list((tmp_path / "inbox").iterdir()) == []  # the probe file is gone
    polling = write_config(
        tmp_path / "polling.yaml", {"inbox_dir": "inbox", "inbox": {"polling": True}}
    )
    _, checks = doctor(capsys, polling, "--no-models")
    assert checks["inbox watch"]["detail"].startswith("polling every 1 s")


def test_models_are_loaded_and_timed(tmp_path, capsys, tiny_clip_config, face_pack) -> None:
    cfg = write_config(tmp_path / "config.yaml", base_config(tmp_path, tiny_clip_config, face_pack))
    code, checks = doctor(capsys, cfg)
    assert code == 0
    clip = checks["CLIP model"]
    assert clip["level"] == "WARN" and "RANDOM WEIGHTS" in clip["detail"]
    assert "dim 32" in clip["detail"] and clip["seconds"] > 0
    faces = checks["face models"]
    assert faces["level"] == "OK" and "dim 128" in faces["detail"] and faces["seconds"] > 0


def test_a_missing_face_model_fails(tmp_path, capsys, tiny_clip_config, face_pack) -> None:
    empty = tmp_path / "empty-pack"
    empty.mkdir()
    cfg = write_config(tmp_path / "config.yaml", base_config(tmp_path, tiny_clip_config, empty))
    code, checks = doctor(capsys, cfg)
    assert code == 1
    assert checks["face models"]["level"] == "FAIL"
    assert checks["face models"]["detail"].startswith("MODEL_UNAVAILABLE")


def test_a_store_made_by_another_model_fails(tmp_path, capsys, tiny_clip_config, face_pack) -> None:
    cfg = write_config(tmp_path / "config.yaml", base_config(tmp_path, tiny_clip_config, face_pack))
    store = Store(load_config(cfg))
    store.open_images("ViT-L-14", 8)
    store.upsert_images(["a" * 64], np.ones((1, 8), np.float32), [{"path": "/x.jpg"}])
    del store
    code, checks = doctor(capsys, cfg)
    assert code == 1
    images = checks["images collection"]
    assert images["level"] == "FAIL" and images["detail"].startswith("MODEL_MISMATCH")
    assert "ViT-L-14" in images["detail"]
    assert checks["faces collection"]["level"] == "OK"


def test_a_daemon_in_error_fails(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"status_dir": "status"})
    progress = Progress(data_dir=str(tmp_path), costs={})
    progress.set_state(
        DaemonStatus.ERROR,
        "MODEL_UNAVAILABLE: no CLIP weights",
        ErrorInfo(code="MODEL_UNAVAILABLE", message="no CLIP weights", hint="put them there"),
    )
    StatusWriter(
        tmp_path / "status" / "training_status.json", progress.snapshot, busy=lambda: False
    ).flush()
    code, checks = doctor(capsys, cfg, "--no-models")
    assert code == 1
    assert checks["status file"]["level"] == "OK"  # this process plays the daemon: alive
    assert checks["daemon error"]["detail"] == (
        "MODEL_UNAVAILABLE: no CLIP weights -> put them there"
    )


def test_folders_others_can_write_are_warned_about(tmp_path, capsys) -> None:
    for name in ("inbox", "data", "status"):
        (tmp_path / name).mkdir()
    cfg = write_config(
        tmp_path / "config.yaml", {"inbox_dir": "inbox", "data_dir": "data", "status_dir": "status"}
    )
    _, checks = doctor(capsys, cfg, "--no-models")
    assert checks["access"]["level"] == "OK", checks["access"]
    assert checks["link roots"]["level"] == "OK"
    assert checks["link roots"]["detail"].startswith("none set: links dropped in the inbox")

    (tmp_path / "inbox").chmod(0o777)  # a shared folder anyone can drop into
    (tmp_path / "status").chmod(0o1777)
    code, checks = doctor(capsys, cfg, "--no-models")
    assert code == 0  # a warning: the daemon works, but trusts too many people
    detail = checks["access"]["detail"]
    assert checks["access"]["level"] == "WARN"
    assert f"the inbox {tmp_path / 'inbox'} is writable by every user (mode 0777)" in detail
    assert f"chmod o-w {tmp_path / 'inbox'}" in detail
    assert f"status_dir {tmp_path / 'status'} is writable by every user" in detail
    assert "data_dir" not in detail


def test_link_roots_that_allow_everything_are_warned_about(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"inbox": {"link_roots": ["/", "nas"]}})
    _, checks = doctor(capsys, cfg, "--no-models")
    assert checks["link roots"]["level"] == "WARN"
    assert "'/' lets a dropped link lead anywhere" in checks["link roots"]["detail"]
    (tmp_path / "nas").mkdir()
    cfg = write_config(tmp_path / "config.yaml", {"inbox": {"link_roots": ["nas", "gone"]}})
    _, checks = doctor(capsys, cfg, "--no-models")
    assert checks["link roots"]["level"] == "WARN"
    assert f"{tmp_path / 'gone'} is not a folder" in checks["link roots"]["detail"]


def test_a_password_in_store_url_is_never_shown(tmp_path, capsys) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: the store cannot be reached
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://imgtrain:hunter2@127.0.0.1:{port}"
    cfg = write_config(tmp_path / "config.yaml", {"store": {"url": url}})
    for argv in (["--json"], []):
        code = main(["--config", str(cfg), "doctor", "--no-models", *argv])
        out = capsys.readouterr()
        assert code == 1  # the store cannot be reached
        assert "hunter2" not in out.out + out.err
        assert f"http://***@127.0.0.1:{port}" in out.out  # the server is still named
