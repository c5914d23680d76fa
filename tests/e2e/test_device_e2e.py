"""`device` end to end, on this machine without a GPU: the real daemon as a subprocess."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch
import yaml

from tests.conftest import make_jpeg, write_config
from tests.e2e.conftest import Daemon


def test_cuda_without_a_gpu_waits_in_error_and_a_reload_to_auto_runs_on_the_cpu(
    daemon_factory, tmp_path: Path
) -> None:
    assert not torch.cuda.is_available(), "this test describes a machine without a GPU"
    d: Daemon = daemon_factory(device="cuda")
    folder = tmp_path / "f"
    make_jpeg(folder / "a.jpg", seed=1)
    d.start()
    s = d.wait_status(lambda s: s["status"] == "error", 90, "DEVICE_UNAVAILABLE")
    assert s["error"]["code"] == "DEVICE_UNAVAILABLE"
    assert "device: cuda asks for a CUDA GPU" in s["error"]["message"]
    assert "device: cpu" in s["error"]["hint"]
    assert s["system"]["device"] is None and s["system"]["onnx_providers"] is None
    os.rename(folder, d.inbox / "f")
    d.wait_status(lambda s: s["queue"]["waiting"] == 1, 30, "the folder to be queued anyway")

    cfg = yaml.safe_load(d.config_path.read_text())
    cfg["device"] = "auto"
    write_config(d.config_path, cfg)
    d.proc.send_signal(signal.SIGHUP)
    final = d.wait_idle_with(completed=1, timeout=120)
    assert final["system"]["device"] == "cpu"
    assert final["system"]["onnx_providers"] == ["CPUExecutionProvider"]
    assert final["error"] is None
    assert "decoding: Pillow (CPU)" in d.log()
    assert d.terminate() == 0
