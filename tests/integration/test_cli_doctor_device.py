"""`imgtrain doctor`'s device line, on this machine without a GPU."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import base_config, write_config
from tests.integration.test_cli_doctor import doctor


@pytest.fixture(autouse=True)
def _no_gpu() -> None:
    assert not torch.cuda.is_available(), "these tests describe a machine without a GPU"


def test_the_device_line_says_what_the_loaded_models_run_on(
    tmp_path, capsys, tiny_clip_config, face_pack
) -> None:
    cfg = write_config(tmp_path / "config.yaml", base_config(tmp_path, tiny_clip_config, face_pack))
    code, checks = doctor(capsys, cfg)
    assert code == 0
    line = checks["device"]
    assert line["level"] == "OK"
    assert line["detail"].startswith("device: auto -> cpu (no GPU: ")
    assert "CLIP fp32, batch 8" in line["detail"]
    assert "decode: Pillow (CPU)" in line["detail"]
    assert "face models: CPUExecutionProvider" in line["detail"]
    assert "(not loaded)" not in line["detail"]


def test_without_models_it_says_what_they_would_ask_for(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"device": "cpu"})
    _, checks = doctor(capsys, cfg, "--no-models")
    detail = checks["device"]["detail"]
    assert detail.startswith("device: cpu -> cpu;")
    assert "CLIP batch 32" in detail and "CPUExecutionProvider (not loaded)" in detail


def test_cuda_without_a_gpu_fails_once_and_skips_the_models(
    tmp_path, capsys, tiny_clip_config, face_pack
) -> None:
    over = base_config(tmp_path, tiny_clip_config, face_pack, device="cuda:0")
    code, checks = doctor(capsys, write_config(tmp_path / "config.yaml", over))
    assert code == 1
    assert checks["device"]["level"] == "FAIL"
    assert checks["device"]["detail"].startswith("DEVICE_UNAVAILABLE: device: cuda:0 asks")
    for name in ("CLIP model", "face models"):
        assert checks[name]["level"] == "WARN" and "skipped" in checks[name]["detail"]


def test_gpu_decoding_without_a_gpu_fails_naming_both_keys(tmp_path, capsys) -> None:
    cfg = write_config(tmp_path / "config.yaml", {"decode": {"device": "cuda"}})
    code, checks = doctor(capsys, cfg, "--no-models")
    assert code == 1
    detail = checks["device"]["detail"]
    assert "decode.device: cuda" in detail and "device: auto came to cpu" in detail
