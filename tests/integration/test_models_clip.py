"""CLIP through the daemon's own loader: a tiny real open_clip model with random weights."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from daemon.config import ClipConfig, Config
from daemon.errors import Code, ModelUnavailable
from daemon.models import ClipModel, ModelRegistry
from tests.conftest import REPO, base_config, make_jpeg


def _tiny(config: Path, **over: object) -> ClipConfig:
    values: dict[str, object] = {
        "model": config.stem,
        "pretrained": "none",
        "model_config": str(config),
        "threads": 1,
        "precision": "fp32",
        "batch_size": 4,
    }
    values.update(over)
    return ClipConfig.model_validate(values)


@pytest.fixture(scope="module")
def clip(tiny_clip_config: Path) -> ClipModel:
    model = ClipModel(_tiny(tiny_clip_config))
    model.load()
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Image.Image]:
    root = tmp_path_factory.mktemp("clip_photos")
    return [Image.open(make_jpeg(root / f"{i}.jpg", seed=i)).convert("RGB") for i in range(6)]


def test_tiny_model_loads_with_its_dimension_and_name(clip: ClipModel) -> None:
    assert clip.loaded
    assert clip.dim == 32
    assert clip.model_name == "imgtrain-tiny/random"
    assert clip.random_weights
    assert clip.precision == "fp32"
    assert tuple(clip.preprocess(Image.new("RGB", (300, 200))).shape) == (3, 64, 64)


def test_image_embeddings_are_unit_vectors_stable_and_distinct(
    clip: ClipModel, photos: list[Image.Image]
) -> None:
    # More images than batch_size, so the batching path runs too.
    first = clip.embed_images(photos)
    again = clip.embed_images([photos[3], photos[0]])
    assert first.shape == (6, 32) and first.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(again, first[[3, 0]], atol=1e-5)
    sims = first @ first.T
    assert sims[np.triu_indices(6, k=1)].max() < 0.9999


def test_text_embeddings_use_the_models_tokenizer(clip: ClipModel) -> None:
    vecs = clip.embed_text(["a photo of a dog", "obama at a podium", "a photo of a dog"])
    assert vecs.shape == (3, 32) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vecs[0], vecs[2], atol=1e-6)
    assert float(vecs[0] @ vecs[1]) < 0.9999
    assert clip.embed_text([]).shape == (0, 32)


def test_random_weights_are_the_same_after_a_restart_and_warn_loudly(
    tiny_clip_config: Path,
    clip: ClipModel,
    photos: list[Image.Image],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="daemon.models.clip"):
        restarted = ClipModel(_tiny(tiny_clip_config))
        restarted.load()
    assert "RANDOM WEIGHTS" in caplog.text and "meaningless" in caplog.text
    np.testing.assert_allclose(
        restarted.embed_images(photos[:2]), clip.embed_images(photos[:2]), atol=1e-6
    )


def test_bf16_image_tower_gives_nearly_the_fp32_vectors(
    tiny_clip_config: Path, clip: ClipModel, photos: list[Image.Image]
) -> None:
    bf16 = ClipModel(_tiny(tiny_clip_config, precision="bf16"))
    vecs = bf16.embed_images(photos)  # loads lazily
    assert bf16.precision == "bf16" and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)
    assert float(np.min(np.sum(vecs * clip.embed_images(photos), axis=1))) > 0.98


def test_missing_weights_file_names_the_path(tiny_clip_config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "weights" / "tiny.safetensors"
    model = ClipModel(_tiny(tiny_clip_config, pretrained=str(missing)))
    with pytest.raises(ModelUnavailable) as info:
        model.load()
    assert info.value.code == Code.MODEL_UNAVAILABLE
    assert str(missing) in info.value.message
    assert not model.loaded


def test_corrupt_weights_file_is_unavailable_not_a_crash(
    tiny_clip_config: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "tiny.bin"
    broken.write_bytes(b"half a download")
    with pytest.raises(ModelUnavailable) as info:
        ClipModel(_tiny(tiny_clip_config, pretrained=str(broken))).load()
    assert str(broken) in info.value.message


def test_unknown_architecture_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable) as info:
        ClipModel(ClipConfig(model="ViT-Nonexistent-7", pretrained="none")).load()
    assert "ViT-Nonexistent-7" in info.value.message


def test_default_tag_without_a_reachable_hub_fails_fast_with_directions(tmp_path: Path) -> None:
    """The default ViT-B-32/laion2b_s34b_b79k with an empty cache and no hub.

    Runs in a child process whose HF_ENDPOINT is a closed local port, so the
    hub is unreachable whatever network the test machine has (the endpoint is
    read when huggingface_hub is imported).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    code = (
        "import sys\n"
        "from daemon.config import ClipConfig\n"
        "from daemon.errors import ModelUnavailable\n"
        "from daemon.models import ClipModel\n"
        "try:\n"
        "    ClipModel(ClipConfig(cache_dir=sys.argv[1])).load()\n"
        "except ModelUnavailable as exc:\n"
        "    print(exc.code); print(exc.message); print(exc.hint)\n"
    )
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}",
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "cache")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.startswith("MODEL_UNAVAILABLE"), out
    assert "ViT-B-32/laion2b_s34b_b79k" in out
    assert str(tmp_path / "cache") in out  # where to put the weights
    assert "clip.pretrained" in out  # or which key to point at a local file


def test_registry_hands_every_phase_the_same_models(
    tiny_clip_config: Path, face_pack: Path, tmp_path: Path
) -> None:
    registry = ModelRegistry(
        Config.model_validate(base_config(tmp_path, tiny_clip_config, face_pack))
    )
    clip = registry.clip()
    assert registry.clip() is clip and registry.faces() is registry.faces()
    assert registry.loaded_clip is None  # creating a model loads nothing
    clip.load()
    assert registry.loaded_clip is clip and clip.model_name == "imgtrain-tiny/random"


def test_preprocessing_a_large_photo_matches_the_models_own_transform(
    clip: ClipModel, tmp_path: Path
) -> None:
    """The integer pre-shrink must not change what the model sees beyond resampling noise."""
    big = Image.open(make_jpeg(tmp_path / "big.jpg", (1500, 1000), seed=3)).convert("RGB")
    fast = clip.preprocess(big).numpy()
    plain = clip._preprocess(big).numpy()  # open_clip's transform on the full image
    assert fast.shape == plain.shape == (3, 64, 64)
    assert float(np.abs(fast - plain).mean()) < 0.02
    vec_fast = clip.embed_tensors([clip.preprocess(big)])
    assert np.allclose(vec_fast, clip.embed_images([big]))  # one path for both entry points
    import torch

    with torch.inference_mode():
        raw = clip._model.encode_image(torch.from_numpy(plain)[None]).float()
    vec_plain = torch.nn.functional.normalize(raw, dim=-1).numpy()
    assert float(vec_fast[0] @ vec_plain[0]) > 0.999
