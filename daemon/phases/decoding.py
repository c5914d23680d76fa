"""How the pipeline decodes photos: Pillow on the CPU, or nvJPEG on the GPU CLIP runs on.

`decode.device` chooses: `cpu` is Pillow (`daemon.imaging.decode`); `cuda`
decodes JPEGs on the GPU that `device` resolved to, and asks for the GPU's
device to be there (DEVICE_UNAVAILABLE otherwise, naming both keys); `auto`
decodes on the GPU when the models run on one, else with Pillow. Either way
each photo is decoded once for every phase. The chunk size follows CLIP's
batch on its device (`clip.batch_size`, or `clip.cuda_batch_size` on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import DeviceUnavailable
from daemon.imaging.decode import Decoded, decode
from daemon.models.device import Device, resolve_device

if TYPE_CHECKING:
    from daemon.config import Config
    from daemon.models.clip import ClipModel

# (path, whether a phase needs the Pillow image) -> the decoded photo
Decoder = Callable[[Path, bool], Decoded]


@dataclass(frozen=True)
class Decoding:
    chunk: int  # images per chunk: CLIP's batch on its device
    decode: Decoder
    where: str  # for the log and the benchmark: "Pillow (CPU)", "cuda:0 (nvJPEG; ...)"


def pillow(config: Config, chunk: int | None = None) -> Decoding:
    cfg = config.decode
    return Decoding(
        chunk or config.clip.batch_size, lambda path, _host: decode(path, cfg), "Pillow (CPU)"
    )


def on_device(config: Config, device: str, chunk: int | None = None) -> Decoding:
    """torchvision's decoder on `device` (nvJPEG on a GPU); Pillow for what it cannot read."""
    from daemon.imaging.gpu import TensorDecoder

    decoder = TensorDecoder(config.decode, device)
    return Decoding(chunk or config.clip.batch_size, decoder.decode, decoder.describe())


def choose(config: Config, clip: ClipModel | None) -> Decoding:
    """The decoding for a pipeline whose CLIP model (None without the embedding phase)
    is loaded. Raises DeviceUnavailable for `decode.device: cuda` without a GPU."""
    chunk = clip.batch_size if clip is not None else config.clip.batch_size
    setting = config.decode.device
    if setting == "cpu":
        return pillow(config, chunk)
    # CLIP's device; without the embedding phase, the configured one (the faces' device).
    device: Device | None = clip.device if clip is not None else None
    device = device or resolve_device(config.device)
    if device.is_cuda:
        return on_device(config, device.torch, chunk)
    if setting == "auto":
        return pillow(config, chunk)
    raise DeviceUnavailable(
        f"decode.device: {setting} decodes on the GPU that device names, and device: "
        f"{config.device} came to {device.describe()}",
        hint="Set decode.device: cpu or auto (or device: cuda on a machine with an NVIDIA "
        "GPU) in config.yaml, then send SIGHUP (systemctl reload imgtrain).",
    )
