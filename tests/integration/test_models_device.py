"""The models on the configured device: real loads on this machine, which has no GPU.

CLIP and the face models resolve `device` when they load: `auto` comes to
the CPU here, `cuda` is refused with DEVICE_UNAVAILABLE and the model stays
unloaded (so the service retries). The GPU path's CLIP preprocessing
(`preprocess_pixels`, fed by the GPU decoder) runs here on CPU tensors from
torchvision's CPU decoder and is checked against the Pillow path's vectors.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime
import open_clip
import pytest
import torch
from PIL import Image

from daemon.config import ClipConfig, DecodeConfig, FacesConfig
from daemon.errors import DeviceUnavailable
from daemon.imaging.decode import decode
from daemon.imaging.gpu import TensorDecoder, clip_input, to_pil
from daemon.models import ClipModel, FaceAnalyzer
from daemon.models import faces as faces_module
from daemon.models.device import CPU_PROVIDER, CUDA_PROVIDER, Device
from tests.conftest import TINY_CLIP, make_jpeg

# The tiny tower at CLIP's real input size (224), so the resize and crop are
# those of ViT-B-32; 32-pixel patches keep it cheap.
TINY_224 = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 224,
                                        "patch_size": 32}}  # fmt: skip


def _clip_cfg(path: Path, **over: object) -> ClipConfig:
    values: dict[str, object] = {
        "model": path.stem,
        "pretrained": "none",
        "model_config": str(path),
        "threads": 1,
        "precision": "fp32",
        "batch_size": 4,
        "cuda_batch_size": 64,
    }
    values.update(over)
    return ClipConfig.model_validate(values)


@pytest.fixture(scope="module")
def tiny224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("clip224") / "imgtrain-tiny224.json"
    path.write_text(json.dumps(TINY_224))
    return path


@pytest.fixture(scope="module")
def clip224(tiny224: Path) -> ClipModel:
    model = ClipModel(_clip_cfg(tiny224), "auto")
    model.load()
    return model


def test_auto_loads_clip_on_the_cpu_here(clip224: ClipModel) -> None:
    assert not torch.cuda.is_available(), "this test describes a machine without a GPU"
    assert clip224.device is not None and clip224.device.torch == "cpu"
    assert clip224.batch_size == 4  # clip.batch_size, not cuda_batch_size
    assert clip224.precision == "fp32"


def test_clip_on_cuda_without_a_gpu_is_refused_and_stays_unloaded(tiny224: Path) -> None:
    model = ClipModel(_clip_cfg(tiny224), "cuda")
    for _ in range(2):  # the service retries; each try says the same
        with pytest.raises(DeviceUnavailable) as err:
            model.load()
        assert "device: cuda asks for a CUDA GPU" in err.value.message
    assert not model.loaded


def test_clip_fp16_on_the_cpu_is_refused(tiny224: Path) -> None:
    with pytest.raises(DeviceUnavailable) as err:
        ClipModel(_clip_cfg(tiny224, precision="fp16"), "cpu").load()
    assert "clip.precision: fp16" in err.value.message


def _photos(shared_photos: Path, tmp: Path) -> list[Path]:
    real = sorted(p for p in shared_photos.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    exif = Image.Exif()
    exif[0x0112] = 6
    made = [
        make_jpeg(tmp / "six_mp.jpg", (3000, 2000), seed=3),
        make_jpeg(tmp / "rotated.jpg", (2400, 1600), seed=4, exif=exif.tobytes()),
        make_jpeg(tmp / "small.jpg", (300, 200), seed=5),
    ]
    return real + made


def test_gpu_path_preprocessing_gives_the_pillow_paths_vectors(
    clip224: ClipModel, shared_photos: Path, tmp_path: Path
) -> None:
    """Decode (torchvision's decoder) + tensor preprocessing vs Pillow decode + open_clip's
    transform, as the embedding phase runs each: inputs within a few thousandths, vectors
    with cosine >= 0.999 (bench/bench_gpu.py measures the same on a GPU)."""
    cfg = DecodeConfig()
    gpu = TensorDecoder(cfg, "cpu")
    ours, theirs, diffs = [], [], []
    for path in _photos(shared_photos, tmp_path):
        d = gpu.decode(path, host_image=False)
        assert d.pixels is not None, path  # every one of these JPEGs went the tensor way
        x = clip224.preprocess_pixels(d.pixels)
        p = decode(path, cfg)
        assert p.image is not None
        y = clip224.preprocess(p.image)
        assert x.shape == y.shape == (3, 224, 224)
        ours.append(x)
        theirs.append(y)
        diffs.append(float((x - y).abs().mean()))
    assert gpu.fallbacks == 0
    assert max(diffs) < 0.05 and float(np.mean(diffs)) < 0.02
    cos = np.sum(clip224.embed_tensors(ours) * clip224.embed_tensors(theirs), axis=1)
    assert float(cos.min()) >= 0.999, cos


@pytest.mark.parametrize(
    ("mode", "interpolation", "size"),
    [("shortest", "bicubic", 224), ("squash", "bicubic", 224), ("shortest", "bilinear", 96)],
)
def test_tensor_transform_matches_open_clips_transform(
    tmp_path: Path, mode: str, interpolation: str, size: int
) -> None:
    img = Image.open(make_jpeg(tmp_path / "a.jpg", (800, 533), seed=7)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    cfg = {"resize_mode": mode, "interpolation": interpolation, "size": size}
    x = clip_input(pixels, (size, size), cfg)
    y = open_clip.image_transform(
        size, is_train=False, resize_mode=mode, interpolation=interpolation
    )(img)
    assert x is not None and x.shape == y.shape
    assert float((x - y).abs().mean()) < 0.01


def test_a_resize_mode_not_done_on_tensors_goes_through_open_clips_transform(
    tiny224: Path, tmp_path: Path
) -> None:
    img = Image.open(make_jpeg(tmp_path / "a.jpg", (500, 300), seed=8)).convert("RGB")
    pixels = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
    assert clip_input(pixels, (224, 224), {"resize_mode": "longest"}) is None
    model = ClipModel(_clip_cfg(tiny224), "cpu")
    model.load()
    model._model.visual.preprocess_cfg = {**model._model.visual.preprocess_cfg,
                                          "resize_mode": "longest"}  # fmt: skip
    assert torch.equal(model.preprocess_pixels(pixels), model.preprocess(to_pil(pixels)))


# -- face models -----------------------------------------------------------------------------
def _faces_cfg(pack: Path) -> FacesConfig:
    return FacesConfig(model_dir=str(pack), download=False, threads=1)


def test_face_models_on_auto_run_on_onnxruntimes_cpu_provider(face_pack: Path) -> None:
    faces = FaceAnalyzer(_faces_cfg(face_pack), "auto")
    faces.load()
    assert faces.device is not None and faces.device.torch == "cpu"
    assert faces.providers == [CPU_PROVIDER]


def test_face_models_on_cuda_without_a_gpu_are_refused(face_pack: Path) -> None:
    faces = FaceAnalyzer(_faces_cfg(face_pack), "cuda:0")
    with pytest.raises(DeviceUnavailable):
        faces.load()
    assert not faces.loaded and faces.providers == []


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_when_onnxruntime_cannot_start_cuda_the_log_says_what_the_faces_got(
    face_pack: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No GPU and no onnxruntime-gpu here: the device and the provider list are patched to
    claim both, so the sessions ask for CUDA; onnxruntime itself (the CPU package) then
    falls back to the CPU, and the analyzer reports what it really got."""
    gpu = Device("cuda:0", "cuda", 0, "Claimed GPU")
    monkeypatch.setattr(faces_module, "resolve_device", lambda value: gpu)
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER]
    )
    faces = FaceAnalyzer(_faces_cfg(face_pack), "cuda:0")
    with caplog.at_level(logging.WARNING, logger="daemon.models.faces"):
        faces.load()
    assert faces.providers == [CPU_PROVIDER]
    warned = [r.getMessage() for r in caplog.records if "could not start" in r.getMessage()]
    assert len(warned) == 1 and CUDA_PROVIDER in warned[0] and "cuda:0" in warned[0]


def test_a_gpu_without_onnxruntime_gpu_warns_once_naming_the_package(
    face_pack: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No GPU here: the device is patched to claim one; onnxruntime is really the CPU package."""
    assert CUDA_PROVIDER not in onnxruntime.get_available_providers()
    gpu = Device("auto", "cuda", 0, "Claimed GPU")
    monkeypatch.setattr(faces_module, "resolve_device", lambda value: gpu)
    faces = FaceAnalyzer(_faces_cfg(face_pack), "auto")
    with caplog.at_level(logging.WARNING, logger="daemon.models.faces"):
        faces.load()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime-gpu" in warnings[0]
    assert faces.providers == [CPU_PROVIDER]
