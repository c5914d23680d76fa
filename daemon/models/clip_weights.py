"""Where CLIP weights are: a file named in the config, an imported file in `models.dir`,
or open_clip's own download in the Hugging Face cache. Knowing this without loading
torch lets `imgtrain models` and the first-start check say what is missing, fast."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from daemon.config import ClipConfig

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def path_like(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(WEIGHT_SUFFIXES)


def looks_like_path(value: str) -> bool:
    """Whether clip.pretrained names a weights file rather than an open_clip tag or `none`."""
    return path_like(value.strip())


def tag_slot(models_dir: str | Path, model: str, tag: str) -> Path:
    """Where an imported file for a tag goes, less its suffix: <models.dir>/clip/<model>/<tag>."""
    safe = model.replace("/", "--").replace(":", "-")
    return Path(models_dir).expanduser() / "clip" / safe / tag


def slot_file(models_dir: str | Path | None, model: str, tag: str) -> Path | None:
    """The imported weights file for `tag`, if there is one."""
    if not models_dir:
        return None
    base = tag_slot(models_dir, model, tag)
    for suffix in WEIGHT_SUFFIXES:
        path = base.with_name(base.name + suffix)
        if path.is_file():
            return path
    return None


def tag_source(tag_cfg: dict[str, Any]) -> str:
    """The URL open_clip downloads a tag's weights from (the Hugging Face hub's, if it has one)."""
    from huggingface_hub import hf_hub_url

    hub = tag_cfg.get("hf_hub") or ""
    if not hub:
        return str(tag_cfg.get("url", ""))
    repo, filename = os.path.split(hub)
    return hf_hub_url(repo, filename or "open_clip_pytorch_model.bin")


def cached_tag_file(cfg: ClipConfig, tag_cfg: dict[str, Any]) -> str | None:
    """A tag's weights in the Hugging Face cache (clip.cache_dir), as open_clip would find them."""
    from huggingface_hub import try_to_load_from_cache

    hub = tag_cfg.get("hf_hub") or ""
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    # open_clip prefers a safetensors twin of a .bin file when the repository has one.
    safe = "open_clip_model.safetensors" if filename.endswith(".bin") else None
    for name in (safe, filename):
        cached = name and try_to_load_from_cache(repo, name, cache_dir=cfg.cache_dir)
        if isinstance(cached, str):
            return cached
    return None
