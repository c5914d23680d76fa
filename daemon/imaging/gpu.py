"""Decode JPEGs on a GPU with nvJPEG (through torchvision), and make CLIP's input there.

On a GPU machine the CLIP tower is nearly free and decoding decides the
speed: Pillow manages about 33 3000x2000 JPEGs a second per core at half
scale, nvJPEG over a thousand. `TensorDecoder` keeps `decode`'s contract
(the same header checks and errors, the same output size from
`planned_size`, EXIF orientation applied, one decode per photo for every
phase) and differs only in where the pixels are decoded:

* JPEGs in RGB or grey go to `torchvision.io.decode_jpeg(device=...)`; the
  upright photo is resized on the GPU and kept there as `Decoded.pixels`, and
  copied back as a Pillow image only when a phase that works on the CPU (the
  faces phase) needs it;
* everything else (PNG, CMYK JPEGs, a JPEG nvJPEG refuses) goes to Pillow's
  `decode`, which also gives a broken file its usual typed error.

torchvision decodes a list of JPEGs in one call more efficiently than one at a
time, so the decode workers' requests are gathered (`_Batcher`): while one
call runs, the requests that arrive meanwhile wait and go together in the next.

The same code runs with `device="cpu"` (torchvision's libjpeg decoder), which
is how it is tested on machines without a GPU.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from daemon.imaging.decode import Decoded, decode, planned_size, read_header

if TYPE_CHECKING:
    import torch

    from daemon.config import DecodeConfig

log = logging.getLogger(__name__)

# torchvision 0.29 deprecates its decoders in favour of TorchCodec and warns on every call.
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io\.image")

NVJPEG_FORMATS = ("JPEG", "MPO")  # an MPO's first image is a plain JPEG at the file's start
NVJPEG_MODES = ("RGB", "L")  # YCbCr and grey; CMYK and YCCK JPEGs go to Pillow
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # open_clip's defaults
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class _Request:
    data: Any  # uint8 1-D CPU tensor: the file's bytes
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class _Batcher:
    """Runs `decode_many` on what several threads ask for at once, in one call.

    The first thread to find no call running makes one, for every request
    queued by then; threads that arrive meanwhile wait, and when the call ends
    one of them makes the next. No thread waits for a batch to fill, so a
    single caller is served at once.
    """

    def __init__(self, decode_many: Callable[[list[Any]], list[Any]]) -> None:
        self._decode_many = decode_many
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self.calls = 0  # decode calls made (tests and the benchmark read it)

    def submit(self, data: Any) -> Any:
        req = _Request(data)
        with self._cond:
            self._queue.append(req)
            while not req.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True
                todo, self._queue = self._queue, []
                self._cond.release()
                try:
                    self._run(todo)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        if req.error is not None:
            raise req.error
        return req.result

    def _run(self, todo: list[_Request]) -> None:
        self.calls += 1
        try:
            results = self._decode_many([r.data for r in todo])
        except Exception as exc:
            if len(todo) == 1:
                _finish(todo[0], error=exc)
                return
            # One bad file fails the whole call; one at a time, only it fails.
            for r in todo:
                try:
                    _finish(r, result=self._decode_many([r.data])[0])
                except Exception as one:
                    _finish(r, error=one)
            return
        except BaseException as exc:
            for r in todo:
                _finish(r, error=exc)
            raise
        for r, result in zip(todo, results, strict=True):
            _finish(r, result=result)


def _finish(req: _Request, result: Any = None, error: BaseException | None = None) -> None:
    req.result, req.error, req.done = result, error, True


class TensorDecoder:
    """`decode` with the pixels decoded by torchvision on `device` (nvJPEG on CUDA)."""

    def __init__(self, cfg: DecodeConfig, device: str) -> None:
        import torch  # noqa: F401  (fails here, not in a decode worker, if torch is missing)

        self.cfg = cfg
        self.device = device
        self._batcher = _Batcher(self._decode_many)
        self._lock = threading.Lock()
        self.fallbacks = 0  # JPEGs the device could not decode, decoded by Pillow instead

    @property
    def calls(self) -> int:
        return self._batcher.calls

    def describe(self) -> str:
        engine = "nvJPEG" if self.device.startswith("cuda") else "torchvision libjpeg"
        return f"{self.device} ({engine}; Pillow for the rest)"

    def _decode_many(self, datas: list[Any]) -> list[Any]:
        from torchvision.io import ImageReadMode, decode_jpeg

        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)

    def decode(self, path: Path, host_image: bool = True) -> Decoded:
        """Like `decode(path, cfg)`; `host_image=False` leaves `image` None (pixels only)."""
        import torch

        header = read_header(path, self.cfg)  # the size checks, and their errors, first
        if header.format not in NVJPEG_FORMATS or header.mode not in NVJPEG_MODES:
            return decode(path, self.cfg)
        try:
            data = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            full = self._batcher.submit(data)
        except (OSError, RuntimeError, ValueError) as exc:
            # Pillow reads it, or says with the usual typed error why nobody can.
            self._fell_back(path, str(exc))
            return decode(path, self.cfg)
        if tuple(full.shape) != (3, header.stored[1], header.stored[0]):
            self._fell_back(path, f"decoded as {tuple(full.shape)}, header says {header.stored}")
            return decode(path, self.cfg)
        (w, h), scale = planned_size(header.stored, self.cfg.max_side, jpeg=True)
        if (w, h) != header.stored:
            full = resize_u8(full, (w, h))
        pixels = orient(full, header.orientation)
        width, height = header.upright
        return Decoded(
            image=to_pil(pixels) if host_image else None,
            width=width,
            height=height,
            scale=scale,
            captured_at=header.captured_at,
            pixels=pixels,
        )

    def _fell_back(self, path: Path, why: str) -> None:
        with self._lock:
            self.fallbacks += 1
            first = self.fallbacks == 1
        # Once at INFO so a person learns it happens; then per file at DEBUG.
        (log.info if first else log.debug)(
            "%s: %s could not decode it (%s); Pillow decodes it instead%s",
            path.name,
            self.device,
            why.splitlines()[0][:200],
            " (later ones are logged at DEBUG)" if first else "",
        )


# -- tensor operations, on whatever device the tensor is on ----------------------------------
def orient(t: torch.Tensor, orientation: int) -> torch.Tensor:
    """A 3xHxW tensor turned upright as EXIF `orientation` says (Pillow's exif_transpose)."""
    import torch

    if orientation == 2:
        return t.flip(-1)
    if orientation == 3:
        return t.flip(-2, -1)
    if orientation == 4:
        return t.flip(-2)
    if orientation == 5:
        return t.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(t, -1, dims=(-2, -1))
    if orientation == 7:
        return t.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(t, 1, dims=(-2, -1))
    return t


def _resize(x: torch.Tensor, size_hw: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """float 3xHxW (0..255) resized with an antialiasing filter, as Pillow's resize does."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == size_hw:
        return x
    out = F.interpolate(x.unsqueeze(0), size=size_hw, mode=mode, antialias=True)
    return out[0].clamp_(0, 255)


def resize_u8(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 3xHxW tensor resized to `size` = (width, height)."""
    import torch

    w, h = size
    return _resize(t.float(), (h, w)).round_().to(torch.uint8)


def to_pil(t: torch.Tensor) -> Image.Image:
    """A Pillow RGB image of a uint8 3xHxW tensor (copied to the host)."""
    return Image.fromarray(t.permute(1, 2, 0).contiguous().cpu().numpy())


def clip_input(
    pixels: torch.Tensor, size_hw: tuple[int, int], cfg: dict[str, Any]
) -> torch.Tensor | None:
    """open_clip's evaluation transform of a uint8 3xHxW tensor, on its device.

    `cfg` is the model's preprocess_cfg. Resize (shorter side to the input
    size, or `squash` to it), centre crop, scale to 0..1, normalise, as
    torchvision does it to a Pillow image; None for the modes not done here
    (`longest` pads, a non-square `shortest` keeps the ratio), which the
    caller then runs through open_clip's own transform.
    """
    mode = cfg.get("resize_mode") or "shortest"
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    th, tw = size_hw
    x = pixels.float()
    if mode == "squash":
        x = _resize(x, (th, tw), interpolation)
    elif mode == "shortest" and th == tw:
        h, w = x.shape[-2:]
        short, long = min(h, w), max(h, w)
        # torchvision's Resize(int): the shorter side to the size, the longer truncated.
        new_long = int(th * long / short)
        new_hw = (th, new_long) if h <= w else (new_long, th)
        x = _resize(x, new_hw, interpolation)
        top = round((new_hw[0] - th) / 2.0)
        left = round((new_hw[1] - tw) / 2.0)
        x = x[:, top : top + th, left : left + tw]
    else:
        return None
    # Pillow rounds the resized pixels to bytes before ToTensor scales them.
    x = x.round_().div_(255.0)
    mean, std = _mean_std(
        tuple(cfg.get("mean") or OPENAI_MEAN), tuple(cfg.get("std") or OPENAI_STD), str(x.device)
    )
    return x.sub_(mean).div_(std).contiguous()


@functools.lru_cache(maxsize=8)
def _mean_std(mean: tuple[float, ...], std: tuple[float, ...], device: str) -> tuple[Any, Any]:
    import torch

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1, 1)

    return column(mean), column(std)
