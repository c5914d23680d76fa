"""The GPU decoder's code, run for real on the CPU.

`TensorDecoder` calls torchvision's `decode_jpeg(device=...)`: nvJPEG on a
GPU, libjpeg on the CPU. There is no GPU here, so these tests run it with
`device="cpu"`: everything but the nvJPEG kernel itself (the header checks,
batching, orientation, resizing, the host copy, the fallback to Pillow) is
the code a GPU runs, checked against the Pillow decoder it must agree with.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from daemon.config import DecodeConfig
from daemon.errors import ImageTooLarge, UnreadableImage
from daemon.imaging.decode import decode, planned_size
from daemon.imaging.gpu import TensorDecoder, _Batcher, _Request, orient
from tests.conftest import make_jpeg
from tests.helpers import wait_for

CFG = DecodeConfig(max_side=1600)


@pytest.fixture
def decoder() -> TensorDecoder:
    return TensorDecoder(CFG, "cpu")


def _arr(img: Image.Image | None) -> np.ndarray:
    assert img is not None
    return np.asarray(img, dtype=np.int16)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_comes_out_as_pillow_turns_it(
    tmp_path: Path, decoder: TensorDecoder, orientation: int
) -> None:
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 15, 10))  # a corner mark that shows any turn or flip
    img.paste((0, 255, 0), (45, 30, 60, 40))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    img.save(path, "JPEG", quality=95, exif=exif)
    ours, pillow = decoder.decode(path), decode(path, CFG)
    assert (ours.width, ours.height) == (pillow.width, pillow.height)
    assert ours.pixels is not None and ours.pixels.dtype == torch.uint8
    assert tuple(ours.pixels.shape) == (3, pillow.height, pillow.width)
    assert np.array_equal(_arr(ours.image), _arr(pillow.image))  # same libjpeg, no resize


@pytest.mark.parametrize(
    "size", [(3000, 2000), (2000, 3000), (4032, 3024), (5000, 1000), (1700, 900), (800, 600)]
)
def test_large_photos_come_out_at_pillows_size_and_scale(
    tmp_path: Path, decoder: TensorDecoder, size: tuple[int, int]
) -> None:
    path = make_jpeg(tmp_path / "big.jpg", size)
    ours, pillow = decoder.decode(path), decode(path, CFG)
    assert ours.image is not None and pillow.image is not None
    assert ours.image.size == pillow.image.size
    assert ours.scale == pytest.approx(pillow.scale)
    assert (ours.width, ours.height) == (pillow.width, pillow.height) == size
    # Pillow reduces by libjpeg's DCT scaling, we by an antialiased resize.
    assert np.abs(_arr(ours.image) - _arr(pillow.image)).mean() < 1.0


def test_planned_size_is_what_pillows_draft_gives(tmp_path: Path) -> None:
    for size in [(3000, 2000), (4000, 3000), (6000, 4000), (1601, 1601), (12000, 900)]:
        path = make_jpeg(tmp_path / f"{size}.jpg", size)
        d = decode(path, CFG)
        assert d.image is not None
        assert planned_size(size, CFG.max_side, jpeg=True) == (d.image.size, d.scale), size


def test_pixels_only_leaves_the_host_image_out(tmp_path: Path, decoder: TensorDecoder) -> None:
    path = make_jpeg(tmp_path / "a.jpg", (640, 480))
    d = decoder.decode(path, host_image=False)
    assert d.image is None
    assert d.pixels is not None and tuple(d.pixels.shape) == (3, 480, 640)


def test_what_the_decoder_cannot_read_goes_to_pillow(tmp_path: Path, decoder: TensorDecoder):
    png = tmp_path / "a.png"
    Image.new("RGBA", (50, 40), (255, 0, 0, 0)).save(png)  # transparent: white after decode
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (50, 40), (0, 255, 0, 0)).save(cmyk, "JPEG")
    for path in (png, cmyk):
        ours, pillow = decoder.decode(path), decode(path, CFG)
        assert ours.pixels is None  # decoded by Pillow, not on the device
        assert np.array_equal(_arr(ours.image), _arr(pillow.image))
    assert decoder.fallbacks == 0  # chosen from the header: nothing was tried and failed


def test_a_jpeg_the_device_refuses_is_decoded_by_pillow_or_fails_as_pillow_says(
    tmp_path: Path, decoder: TensorDecoder
) -> None:
    path = make_jpeg(tmp_path / "cut.jpg", (400, 300))
    path.write_bytes(path.read_bytes()[:3000])  # cut off mid-copy
    with pytest.raises(UnreadableImage) as err:
        decoder.decode(path)
    assert err.value.path == str(path) and "truncated" in err.value.message
    assert decoder.fallbacks == 1


def test_size_limits_are_checked_from_the_header_first(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "a.jpg", (400, 300))
    strict = TensorDecoder(DecodeConfig(max_image_pixels=1000), "cpu")
    with pytest.raises(ImageTooLarge):
        strict.decode(path)
    assert strict.calls == 0  # refused before any pixel was decoded


def test_decoder_threads_get_their_own_photos_back(tmp_path: Path, decoder: TensorDecoder):
    paths = [make_jpeg(tmp_path / f"{i}.jpg", (200 + 10 * i, 150), seed=i) for i in range(12)]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = _arr(decoder.decode(paths[i]).image)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(paths))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i, path in enumerate(paths):
        assert np.array_equal(got[i], _arr(decode(path, CFG).image)), path.name
    assert decoder.calls <= len(paths)


def test_orient_undoes_what_each_exif_value_did() -> None:
    t = torch.arange(2 * 3).reshape(1, 2, 3)
    assert torch.equal(orient(t, 1), t)
    assert tuple(orient(t, 6).shape) == (1, 3, 2)
    assert torch.equal(orient(orient(t, 3), 3), t)  # 180 degrees twice
    assert torch.equal(orient(orient(t, 6), 8), t)  # a quarter turn each way


# -- gathering requests into one call ---------------------------------------------------------
def test_requests_that_wait_during_a_call_go_together_in_the_next() -> None:
    entered, release = threading.Event(), threading.Event()
    sizes: list[int] = []

    def decode_many(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if len(sizes) == 1:  # hold the first call until the others are queued
            entered.set()
            release.wait(30)
        return [x * 10 for x in items]

    batcher = _Batcher(decode_many)
    results: dict[int, int] = {}
    first = threading.Thread(target=lambda: results.update({0: batcher.submit(0)}))
    first.start()
    assert entered.wait(30)
    others = [
        threading.Thread(target=lambda i=i: results.update({i: batcher.submit(i)}))
        for i in range(1, 6)
    ]
    for t in others:
        t.start()
    wait_for(lambda: len(batcher._queue) == 5, 30, "the other requests to queue")
    release.set()
    for t in [first, *others]:
        t.join(timeout=30)
    assert results == {i: i * 10 for i in range(6)}
    assert sizes == [1, 5]


def test_one_bad_item_fails_alone() -> None:
    def decode_many(items: list[int]) -> list[int]:
        if -1 in items:
            raise RuntimeError("Not a JPEG file")
        return [x + 1 for x in items]

    batcher = _Batcher(decode_many)
    # Three requests taken by one call, as the queue hands them over.
    reqs = [_Request(x) for x in (1, -1, 3)]
    batcher._run(reqs)
    assert [r.result for r in reqs] == [2, None, 4]
    assert isinstance(reqs[1].error, RuntimeError)
    assert reqs[0].error is None and reqs[2].error is None


def test_a_single_failing_request_raises_in_its_caller() -> None:
    batcher = _Batcher(lambda items: [1 / 0 for _ in items])
    with pytest.raises(ZeroDivisionError):
        batcher.submit(1)
    assert batcher._busy is False  # the next caller can make a call
