"""The pipeline with the GPU decoder's code, and the choice of decoder.

There is no GPU here. The pipeline is given the tensor decoder on the CPU
(`decoding.on_device(config, "cpu")`: torchvision's libjpeg decoder where a
GPU would use nvJPEG), so the path a GPU-decoded photo takes through the
pipeline (pixels to the phase that takes them, a host image only for phases
that need one, pixels released after `prepare`) runs for real.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from daemon.config import Config
from daemon.errors import Code, DeviceUnavailable
from daemon.phases import decoding
from daemon.phases.base import BatchInfo, DecodedImage
from daemon.vocab import ImageOutcome, ImageState, PhaseName
from tests.integration.test_pipeline import CHUNK, N_IMAGES, Rig


class SeeingPhase:
    """Records what the pipeline handed it in `prepare` and in `process`."""

    def __init__(self, name: PhaseName, takes_pixels: bool) -> None:
        self.name = name
        self.takes_pixels = takes_pixels
        self.prepared: list[tuple[bool, bool]] = []  # (pixels given, host image given)
        self.processed: list[tuple[bool, bool]] = []

    def setup(self, ctx) -> None:
        pass

    def prepare(self, image: DecodedImage) -> int:
        if image.pixels is not None:
            assert image.pixels.dtype == torch.uint8
            assert tuple(image.pixels.shape) == (3, image.height, image.width)
        self.prepared.append((image.pixels is not None, image.image is not None))
        return image.width

    def process(self, batch: BatchInfo, images: list[DecodedImage], report) -> list[ImageOutcome]:
        outcomes = []
        for img in images:
            self.processed.append((img.pixels is not None, img.image is not None))
            report(1)
            outcomes.append(ImageOutcome(img.image_id, ImageState.DONE))
        return outcomes

    def cleanup(self) -> None:
        pass


def _run(rig: Rig, phases: list[SeeingPhase]) -> decoding.Decoding:
    pipeline, _, _ = rig.pipeline()
    pipeline.image_phases = phases  # type: ignore[assignment]
    pipeline.decoding = decoding.on_device(rig.config, "cpu", CHUNK)
    rig.run(pipeline)
    return pipeline.decoding


def test_pixels_reach_the_phase_that_takes_them_and_a_host_image_the_other(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    emb = SeeingPhase(PhaseName.EMBEDDING, takes_pixels=True)
    faces = SeeingPhase(PhaseName.FACES, takes_pixels=False)
    used = _run(rig, [emb, faces])
    assert "cpu (torchvision libjpeg" in used.where
    assert emb.prepared == [(True, True)] * N_IMAGES  # faces is pending too: host copy made
    assert faces.prepared == [(True, True)] * N_IMAGES
    # After prepare the device copy is let go; only what prepare made is kept.
    assert emb.processed == faces.processed == [(False, True)] * N_IMAGES
    assert rig.steps()["embedding"] == [N_IMAGES, N_IMAGES]


def test_no_host_copy_when_every_pending_phase_takes_pixels(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    emb = SeeingPhase(PhaseName.EMBEDDING, takes_pixels=True)
    _run(rig, [emb])
    assert emb.prepared == [(True, False)] * N_IMAGES
    assert emb.processed == [(False, False)] * N_IMAGES


def test_a_photo_nobody_can_decode_is_recorded_as_with_pillow(tmp_path: Path) -> None:
    rig = Rig(tmp_path, corrupt=1)
    emb = SeeingPhase(PhaseName.EMBEDDING, takes_pixels=True)
    faces = SeeingPhase(PhaseName.FACES, takes_pixels=False)
    used = _run(rig, [emb, faces])
    assert len(emb.processed) == len(faces.processed) == N_IMAGES - 1
    errors = rig.ledger.query("SELECT file, code FROM errors WHERE batch_id=?", (rig.batch_id,))
    assert [(e["file"], e["code"]) for e in errors] == [("1.jpg", "UNREADABLE_IMAGE")]
    # Cut at 200 bytes, its header fails to read: refused before any decoder runs (a file
    # cut later is tried by the device and then by Pillow: tests/unit/test_gpu_decode.py).
    assert used.decode.__self__.fallbacks == 0  # type: ignore[attr-defined]


# -- choosing -------------------------------------------------------------------------------
def _config(tmp_path: Path, **over: object) -> Config:
    return Config.model_validate({"data_dir": tmp_path, **over})


def test_decode_device_cpu_is_pillow_with_the_cpu_batch(tmp_path: Path) -> None:
    chosen = decoding.choose(_config(tmp_path, clip={"batch_size": 7}), None)
    assert chosen.where == "Pillow (CPU)" and chosen.chunk == 7


def test_decode_device_auto_is_pillow_without_a_gpu(tmp_path: Path) -> None:
    assert not torch.cuda.is_available(), "this test describes a machine without a GPU"
    chosen = decoding.choose(_config(tmp_path, decode={"device": "auto"}), None)
    assert chosen.where == "Pillow (CPU)"


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_decode_device_cuda_without_a_gpu_names_both_keys(tmp_path: Path, device: str) -> None:
    assert not torch.cuda.is_available(), "this test describes a machine without a GPU"
    with pytest.raises(DeviceUnavailable) as err:
        decoding.choose(_config(tmp_path, device=device, decode={"device": "cuda"}), None)
    assert err.value.code == Code.DEVICE_UNAVAILABLE
    assert "decode.device: cuda" in err.value.message and f"device: {device}" in err.value.message
    assert "decode.device: cpu" in err.value.hint
