"""Where the models run: `device` from the config, resolved against this machine.

`auto` is the first CUDA GPU when torch sees one, else the CPU. `cuda` and
`cuda:N` are demands: asked for and absent, loading fails with
DEVICE_UNAVAILABLE naming the key and its value, and, as with a missing model,
the daemon keeps queuing folders and tries again. CLIP runs there in bf16 (or
fp16 where the GPU lacks bf16). The face models run through onnxruntime, whose
CUDA execution provider comes only with the `onnxruntime-gpu` package; without
it they run on the CPU and the log says once which package to install.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.errors import ConfigError, DeviceUnavailable

if TYPE_CHECKING:
    import torch

    from daemon.config import ClipConfig

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
GPU_PACKAGE = "onnxruntime-gpu"
_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::([0-9]+))?$")


@dataclass(frozen=True)
class Device:
    """A resolved device: what was asked for, and what it came to on this machine."""

    requested: str  # the config value: auto, cpu, cuda or cuda:N
    kind: str  # "cpu" or "cuda"
    index: int | None = None  # the CUDA device's index
    name: str = "cpu"  # the GPU's name, or "cpu"
    note: str = ""  # why `auto` came to the CPU: "no GPU: ..."

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def torch(self) -> str:
        """The torch device string: "cpu" or "cuda:N"."""
        return f"cuda:{self.index}" if self.is_cuda else "cpu"

    def describe(self) -> str:
        """ "cpu", or "cuda:0 (NVIDIA H200)"; with why `auto` came to the CPU, if it did."""
        if self.is_cuda:
            return f"{self.torch} ({self.name})"
        return f"cpu ({self.note})" if self.note else "cpu"


def parse_device(value: str, key: str = "device") -> tuple[str, int | None]:
    """("auto" | "cpu" | "cuda", index or None) from a config value; ConfigError if malformed."""
    m = _DEVICE.match(value.strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise ConfigError(f"{key}: {value!r} is not auto, cpu, cuda or cuda:N")
    return m.group(1), None if m.group(2) is None else int(m.group(2))


def _no_cuda(torch: Any) -> tuple[str, str]:
    """(why torch sees no GPU, what to do about it)."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build",
            "install a CUDA build of torch (README.md, GPU)",
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f", CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
    return (
        f"torch {torch.__version__} finds no GPU or driver{where}",
        "check that nvidia-smi lists the GPU for the daemon's user",
    )


def resolve_device(value: str, key: str = "device") -> Device:
    """The device `value` means here; DeviceUnavailable when a GPU is asked for and absent."""
    kind, index = parse_device(value, key)
    if kind == "cpu":
        return Device(value, "cpu")
    import torch

    if not torch.cuda.is_available():
        reason, remedy = _no_cuda(torch)
        if kind == "auto":
            return Device(value, "cpu", note=f"no GPU: {reason}")
        raise DeviceUnavailable(
            f"{key}: {value} asks for a CUDA GPU, but {reason}",
            hint=f"Set {key}: cpu (or auto) in config.yaml, or {remedy}; then send SIGHUP "
            "(systemctl reload imgtrain).",
        )
    count = torch.cuda.device_count()
    index = 0 if index is None else index
    if index >= count:
        raise DeviceUnavailable(
            f"{key}: {value} asks for GPU {index}, but torch sees {count} "
            f"(cuda:0 to cuda:{count - 1})",
            hint=f"Set {key} to one of cuda:0 to cuda:{count - 1}, cuda or auto in config.yaml, "
            "then send SIGHUP (systemctl reload imgtrain).",
        )
    return Device(value, "cuda", index, torch.cuda.get_device_name(index))


def clip_dtype(precision: str, device: Device, cpu_fast_bf16: bool) -> torch.dtype:
    """The image tower's dtype for `clip.precision` on `device`.

    On a GPU `auto` is bf16 where the GPU computes it natively (Ampere and
    later), else fp16; on the CPU it is bf16 only where the CPU has native
    bf16 (else it is emulated and slower than fp32). fp16 on the CPU is
    refused: it is emulated there and gains nothing.
    """
    import torch

    if device.is_cuda:
        if precision == "auto":
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if supported else torch.float16
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if precision == "fp16":
        raise DeviceUnavailable(
            f"clip.precision: fp16 needs a GPU, and CLIP runs on the CPU "
            f"(device: {device.requested})",
            hint="Set clip.precision to auto, bf16 or fp32 in config.yaml, or run on a GPU; "
            "then send SIGHUP (systemctl reload imgtrain).",
        )
    if precision == "bf16" or (precision == "auto" and cpu_fast_bf16):
        return torch.bfloat16
    return torch.float32


def clip_batch_size(cfg: ClipConfig, device: Device) -> int:
    """Images per CLIP call: a GPU wants many more than the CPU's cache-sized batch."""
    return cfg.cuda_batch_size if device.is_cuda else cfg.batch_size


def dtype_name(dtype: Any) -> str:
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), "fp32")


@dataclass(frozen=True)
class OrtChoice:
    """The execution providers to ask onnxruntime for, and a warning if CUDA is left out."""

    providers: list[Any] = field(default_factory=lambda: [CPU_PROVIDER])
    warning: str | None = None


def ort_providers(device: Device) -> OrtChoice:
    """CUDA (on `device`'s GPU) then CPU when onnxruntime has CUDA, else the CPU alone.

    `resolve_device` has imported torch by now, and a CUDA build of torch loads
    the CUDA and cuDNN libraries that onnxruntime's CUDA provider then finds.
    """
    if not device.is_cuda:
        return OrtChoice()
    import onnxruntime as ort

    available = ort.get_available_providers()
    if CUDA_PROVIDER in available:
        return OrtChoice([(CUDA_PROVIDER, {"device_id": device.index}), CPU_PROVIDER])
    return OrtChoice(
        warning=f"face models run on the CPU although {device.describe()} is there: onnxruntime "
        f"{ort.__version__} has no {CUDA_PROVIDER} (it offers {', '.join(available)}); "
        + _install_gpu_package()
    )


def _install_gpu_package() -> str:
    from importlib.metadata import PackageNotFoundError, version

    # Both packages install the same `onnxruntime` directory, and the CPU
    # one, installed last, hides the other's CUDA provider.
    try:
        version(GPU_PACKAGE)
    except PackageNotFoundError:
        return (
            f"install the {GPU_PACKAGE} package in place of onnxruntime (pip uninstall -y "
            f"onnxruntime && pip install {GPU_PACKAGE}; README.md, GPU)"
        )
    return (
        f"{GPU_PACKAGE} is installed but so is onnxruntime, which hides it: pip uninstall -y "
        f"onnxruntime && pip install --force-reinstall --no-deps {GPU_PACKAGE}"
    )


def provider_names(providers: list[Any]) -> list[str]:
    return [p[0] if isinstance(p, tuple) else str(p) for p in providers]
