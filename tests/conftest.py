"""Fixtures shared by every tier: real data made small.

`../shared/` (real face models and photos) sits beside the repository in CI.
A test that needs it and does not find it fails with a message; it never
skips, because a skipped test there would hide a broken checkout.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    root = Path(os.environ.get("IMGTRAIN_SHARED", REPO.parent / "shared"))
    if not (root / "models" / "faces").is_dir() or not (root / "photos").is_dir():
        pytest.fail(
            f"{root} is missing models/faces or photos: these tests need the shared test data "
            "beside the repository (../shared) or IMGTRAIN_SHARED pointing at it",
            pytrace=False,
        )
    return root


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def shared_photos(shared: Path) -> Path:
    return shared / "photos"


@pytest.fixture(scope="session")
def face_pack(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An insightface model pack: one detector and the recognizer, as links to ../shared."""
    pack = tmp_path_factory.mktemp("face_pack") / "testpack"
    pack.mkdir()
    for name in ("det_2.5g.onnx", "mobilefacenet_128.onnx"):
        (pack / name).symlink_to(shared / "models" / "faces" / name)
    return pack


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="session")
def tiny_clip_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny open_clip architecture; loaded with `pretrained: none` it has random weights."""
    path = tmp_path_factory.mktemp("clip") / "imgtrain-tiny.json"
    path.write_text(json.dumps(TINY_CLIP))
    return path


def save_tiny_clip_weights(path: Path, arch: Path, seed: int = 1) -> Path:
    """A real open_clip weights file (a state dict, as open_clip saves them) for `arch`."""
    import open_clip
    import torch

    open_clip.add_model_config(arch)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch.stem, pretrained=None, device="cpu")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def tiny_clip_weights(tiny_clip_config: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights for the tiny architecture in a file: `clip.pretrained` as a local file."""
    return save_tiny_clip_weights(tmp_path_factory.mktemp("weights") / "tiny.pt", tiny_clip_config)


@pytest.fixture(scope="session")
def tiny_clip24_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny architecture (24-d vectors): what a library is re-indexed with in tests."""
    path = tmp_path_factory.mktemp("clip24") / "imgtrain-tiny24.json"
    path.write_text(json.dumps({**TINY_CLIP, "embed_dim": 24}))
    return path


def clip_section(arch: Path) -> dict:
    """The config's `clip` keys for a tiny architecture file, random weights, one thread."""
    return {
        "model": arch.stem,
        "pretrained": "none",
        "model_config": str(arch),
        "batch_size": 8,
        "threads": 1,
        "precision": "fp32",
    }


def make_jpeg(
    path: Path, size: tuple[int, int] = (320, 240), seed: int = 0, **save: object
) -> Path:
    """A JPEG with varied content (so its hash and embedding differ per seed)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        x1, y1 = x0 + rng.randrange(10, 120), y0 + rng.randrange(10, 120)
        draw.rectangle([x0, y0, x1, y1], fill=tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, "JPEG", quality=90, **save)
    return path


@pytest.fixture
def jpeg_factory() -> Callable[..., Path]:
    return make_jpeg


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def base_config(tmp: Path, tiny_clip: Path, pack: Path, **over: object) -> dict:
    """A config dict for a daemon in `tmp` with the tiny CLIP and the shared face models."""
    cfg: dict = {
        "inbox_dir": str(tmp / "inbox"),
        "data_dir": str(tmp / "data"),
        "status_dir": str(tmp / "status"),
        "log_level": "INFO",
        "inbox": {"settle_seconds": 1.0, "scan_interval_seconds": 0.25, "rescan_seconds": 5},
        "status": {"heartbeat_seconds": 2, "busy_interval_seconds": 0.5},
        "clip": clip_section(tiny_clip),
        "faces": {"model_dir": str(pack), "download": False, "threads": 1},
        "models": {"retry_seconds": 2},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path
