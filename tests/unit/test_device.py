"""Choosing the device, the CLIP precision and batch, and onnxruntime's providers.

This machine has no GPU, so `auto` resolving to the CPU and `cuda` refused
are real here. Where a test needs a GPU or onnxruntime's CUDA provider to be
present, it says so and patches only the one query that reports it
(`torch.cuda.is_available`, `onnxruntime.get_available_providers`): nothing
below claims that a CUDA code path ran.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime
import pytest
import torch

from daemon.config import ClipConfig, load_config
from daemon.errors import Code, ConfigError, DeviceUnavailable, ModelUnavailable
from daemon.models import device as devmod
from daemon.models.device import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    Device,
    clip_batch_size,
    clip_dtype,
    ort_providers,
    parse_device,
    provider_names,
    resolve_device,
)

GPU = Device("cuda:1", "cuda", 1, "Some GPU")  # a resolved GPU, as resolve_device makes one
CPU = Device("cpu", "cpu")


def _hide_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU on this machine; where the suite runs on one, it is hidden from torch."""
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("auto", ("auto", None)), ("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
     ("cuda:0", ("cuda", 0)), ("CUDA:12", ("cuda", 12))],
)  # fmt: skip
def test_device_values_parse(value: str, parsed: tuple[str, int | None]) -> None:
    assert parse_device(value) == parsed


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cpu:0", "cuda:-1", ""])
def test_a_bad_device_in_the_config_names_key_and_value(tmp_path: Path, bad: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"device: {bad!r}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert err.value.code == Code.CONFIG_INVALID
    assert "device:" in err.value.message and repr(bad) in err.value.message
    with pytest.raises(ConfigError):
        parse_device(bad)


def test_device_keys_come_from_the_environment_too(tmp_path: Path) -> None:
    empty = tmp_path / "c.yaml"
    empty.write_text("")
    env = {"IMGTRAIN_DEVICE": "cuda:1", "IMGTRAIN_DECODE__DEVICE": "cuda"}
    cfg = load_config(empty, environ=env)
    assert (cfg.device, cfg.decode.device) == ("cuda:1", "cuda")
    defaults = load_config(empty, environ={})
    assert (defaults.device, defaults.decode.device) == ("auto", "cpu")
    with pytest.raises(ConfigError) as err:
        load_config(empty, environ={"IMGTRAIN_DECODE__DEVICE": "gpu"})
    assert "decode.device" in err.value.message and "'gpu'" in err.value.message


def test_cpu_is_the_cpu_and_needs_no_torch_query() -> None:
    d = resolve_device("cpu")
    assert (d.kind, d.torch, d.is_cuda, d.describe()) == ("cpu", "cpu", False, "cpu")


def test_auto_is_the_cpu_on_a_machine_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_gpu(monkeypatch)
    d = resolve_device("auto")
    assert d.torch == "cpu" and d.requested == "auto"
    assert d.note.startswith("no GPU: ")  # doctor and the log say why
    assert "no GPU" in d.describe()


@pytest.mark.parametrize("value", ["cuda", "cuda:0"])
def test_cuda_asked_for_and_absent_is_a_typed_error_naming_key_and_value(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    _hide_gpu(monkeypatch)
    with pytest.raises(DeviceUnavailable) as err:
        resolve_device(value)
    assert err.value.code == Code.DEVICE_UNAVAILABLE == "DEVICE_UNAVAILABLE"
    assert f"device: {value} asks for a CUDA GPU" in err.value.message
    assert "device: cpu" in err.value.hint and "SIGHUP" in err.value.hint
    # Like a missing model, the batch waits and the daemon retries (service/outcome.py).
    assert isinstance(err.value, ModelUnavailable)


def test_the_key_named_is_the_one_asked_about(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_gpu(monkeypatch)
    with pytest.raises(DeviceUnavailable) as err:
        resolve_device("cuda", key="workers.device")
    assert err.value.message.startswith("workers.device: cuda")


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU cannot exist here: torch's two queries are patched to report one GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceUnavailable) as err:
        resolve_device("cuda:3")
    assert "device: cuda:3 asks for GPU 3, but torch sees 1 (cuda:0 to cuda:0)" in err.value.message
    assert "cuda:0 to cuda:0" in err.value.hint


def test_auto_and_cuda_pick_the_first_gpu_when_torch_sees_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU cannot exist here: torch's queries are patched to report two GPUs."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"GPU number {i}")
    assert resolve_device("auto").torch == "cuda:0"
    assert resolve_device("cuda").describe() == "cuda:0 (GPU number 0)"
    assert resolve_device("cuda:1").torch == "cuda:1"


# -- CLIP: precision and batch ----------------------------------------------------------
def test_cpu_precision_follows_the_cpus_bf16() -> None:
    assert clip_dtype("auto", CPU, cpu_fast_bf16=False) == torch.float32
    assert clip_dtype("auto", CPU, cpu_fast_bf16=True) == torch.bfloat16
    assert clip_dtype("bf16", CPU, cpu_fast_bf16=False) == torch.bfloat16
    assert clip_dtype("fp32", CPU, cpu_fast_bf16=True) == torch.float32


def test_fp16_on_the_cpu_is_refused_naming_the_key() -> None:
    with pytest.raises(DeviceUnavailable) as err:
        clip_dtype("fp16", Device("auto", "cpu"), cpu_fast_bf16=False)
    assert "clip.precision: fp16 needs a GPU" in err.value.message
    assert "(device: auto)" in err.value.message
    assert "clip.precision" in err.value.hint


def test_on_a_gpu_auto_is_bf16_where_native_else_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: torch's bf16 query is patched, first to yes, then to no."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert clip_dtype("auto", GPU, cpu_fast_bf16=False) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert clip_dtype("auto", GPU, cpu_fast_bf16=True) == torch.float16
    assert clip_dtype("fp16", GPU, cpu_fast_bf16=False) == torch.float16
    assert clip_dtype("fp32", GPU, cpu_fast_bf16=False) == torch.float32
    assert clip_dtype("bf16", GPU, cpu_fast_bf16=False) == torch.bfloat16


def test_a_gpu_gets_the_larger_batch() -> None:
    cfg = ClipConfig(batch_size=32, cuda_batch_size=256)
    assert clip_batch_size(cfg, CPU) == 32
    assert clip_batch_size(cfg, GPU) == 256
    assert ClipConfig().cuda_batch_size > ClipConfig().batch_size


# -- onnxruntime providers ------------------------------------------------------------------
def test_the_cpu_asks_onnxruntime_for_the_cpu_only() -> None:
    choice = ort_providers(resolve_device("cpu"))
    assert choice.providers == [CPU_PROVIDER] and choice.warning is None


def _without_cuda_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """This environment's onnxruntime is the CPU package; elsewhere its CUDA provider is hidden."""
    real = onnxruntime.get_available_providers()
    if CUDA_PROVIDER in real:
        monkeypatch.setattr(
            onnxruntime, "get_available_providers", lambda: [p for p in real if p != CUDA_PROVIDER]
        )


def test_a_gpu_without_onnxruntime_gpu_runs_faces_on_the_cpu_and_names_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _without_cuda_provider(monkeypatch)
    choice = ort_providers(GPU)
    assert choice.providers == [CPU_PROVIDER]
    assert choice.warning is not None
    assert "face models run on the CPU" in choice.warning
    assert "onnxruntime-gpu" in choice.warning and "pip uninstall -y onnxruntime" in choice.warning


def test_both_onnxruntime_packages_installed_is_named_as_the_cause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """onnxruntime-gpu is not installed here: the version lookup is patched to find it."""
    import importlib.metadata

    _without_cuda_provider(monkeypatch)
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "1.32.0" if name == "onnxruntime-gpu" else real(name),
    )
    warning = ort_providers(GPU).warning
    assert warning is not None and "hides it" in warning and "--force-reinstall" in warning


def test_a_gpu_with_onnxruntimes_cuda_provider_asks_for_it_on_that_gpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No onnxruntime-gpu here: the provider query is patched to list CUDA."""
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER]
    )
    choice = ort_providers(GPU)
    assert choice.providers == [(CUDA_PROVIDER, {"device_id": 1}), CPU_PROVIDER]
    assert choice.warning is None
    assert provider_names(choice.providers) == [CUDA_PROVIDER, CPU_PROVIDER]


def test_the_module_reads_no_gpu_state_at_import() -> None:
    # Importing the package must stay cheap (README: commands that embed nothing).
    assert "torch" not in devmod.__dict__
