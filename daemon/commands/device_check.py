"""`imgtrain doctor`'s device line: where CLIP, decoding and the face models run.

With the models loaded it reports what they got (CLIP's precision and batch,
the providers onnxruntime gave the face sessions); with `--no-models`, what
they would ask for.
"""

from __future__ import annotations

from typing import Any

from daemon.config import Config
from daemon.errors import ImgtrainError
from daemon.models.device import (
    CUDA_PROVIDER,
    Device,
    clip_batch_size,
    ort_providers,
    provider_names,
)


def device_check(config: Config, device: Device, clip: Any, faces: Any) -> tuple[str, str]:
    """(OK | WARN | FAIL, the line) for a resolved `device` and the models loaded (or None)."""
    from daemon.phases import decoding

    level, parts = "OK", [f"device: {config.device} -> {device.describe()}"]
    if clip is not None:
        parts.append(f"CLIP {clip.precision}, batch {clip.batch_size}")
    elif "embedding" in config.phases:
        parts.append(f"CLIP batch {clip_batch_size(config.clip, device)}")
    try:
        parts.append(f"decode: {decoding.choose(config, clip).where}")
    except ImgtrainError as exc:
        return "FAIL", f"{exc.code}: {exc.message} -> {exc.hint}"
    if "faces" in config.phases:
        choice = ort_providers(device)
        if faces is not None:
            names = list(faces.providers)
            parts.append(f"face models: {', '.join(names)}")
        else:
            names = provider_names(choice.providers)
            parts.append(f"face models: {', '.join(names)} (not loaded)")
        if choice.warning:
            level = "WARN"
            parts.append(f"-> {choice.warning}")
        elif device.is_cuda and CUDA_PROVIDER not in names:
            level = "WARN"
            parts.append(f"-> onnxruntime could not start {CUDA_PROVIDER} (its message says why)")
    return level, "; ".join(parts)
