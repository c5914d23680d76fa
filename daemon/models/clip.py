"""open_clip, loaded once, for image embeddings (ingest) and text embeddings (search).

Weights come from one of three places, chosen by `clip.pretrained`:

* an open_clip tag (`laion2b_s34b_b79k`): a file that `imgtrain models import`
  put in `<models.dir>/clip/<model>/<tag>.*`, else the Hugging Face cache in
  `clip.cache_dir` (no network at all for either), else downloaded;
* a local weights file;
* `none`: random weights, for tests and for trying the daemon out. Search
  results are then meaningless, and the daemon says so loudly.

It runs on the configured `device` (`daemon.models.device`): on a GPU the
image tower runs in bf16 or fp16 with `clip.cuda_batch_size` images a call,
and photos decoded on the GPU are prepared there too (`preprocess_pixels`).
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.errors import DeviceUnavailable, ModelUnavailable
from daemon.models.base import InferenceModel
from daemon.models.clip_weights import cached_tag_file, path_like, slot_file, tag_slot, tag_source
from daemon.models.device import (
    Device,
    clip_batch_size,
    clip_dtype,
    dtype_name,
    resolve_device,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from daemon.config import ClipConfig

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0  # seconds for the one request that tells whether the hub is reachable


def cpu_has_fast_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX); else it is emulated."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool({"avx512_bf16", "amx_bf16"} & set(line.split(":", 1)[-1].split()))
    return False


class ClipModel(InferenceModel):
    """One open_clip model shared by image and text encoding."""

    def __init__(
        self, cfg: ClipConfig, device: str = "cpu", models_dir: str | Path | None = None
    ) -> None:
        super().__init__(f"clip:{cfg.model}")
        self.cfg = cfg
        self.device_setting = device  # the config's `device`, resolved when loading
        self.device: Device | None = None
        self.models_dir = models_dir
        self.weights_file: str | None = None  # the file loaded (None for random weights)
        self._model: Any = None
        self._preprocess: Any = None
        self._tokenizer: Any = None
        self._dtype: torch.dtype | None = None
        self._dim = 0
        self._random = cfg.pretrained.strip().lower() == "none"
        weights = cfg.pretrained
        if self._random:
            weights = "random"
        elif path_like(weights):
            weights = Path(weights).name
        self.model_name = f"{cfg.model}/{weights}"

    # -- properties -----------------------------------------------------------
    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    @property
    def random_weights(self) -> bool:
        return self._random

    @property
    def precision(self) -> str:
        self.load()
        return dtype_name(self._dtype)

    @property
    def batch_size(self) -> int:
        """Images per model call on the device it runs on."""
        self.load()
        assert self.device is not None
        return clip_batch_size(self.cfg, self.device)

    # -- loading --------------------------------------------------------------
    def _load(self) -> None:
        import open_clip
        import torch
        from safetensors import SafetensorError

        cfg = self.cfg
        t0 = time.monotonic()
        device = resolve_device(self.device_setting)
        # Refused before seconds go into loading weights, if the device cannot run it.
        dtype = clip_dtype(cfg.precision, device, not device.is_cuda and cpu_has_fast_bf16())
        self._register_architecture(open_clip)
        weights, preprocess_cfg = self._resolve_weights(open_clip)
        self.weights_file = weights
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        try:
            # Random weights are seeded, so a restarted daemon makes the same
            # (meaningless) vectors and its store stays self-consistent;
            # fork_rng keeps the seed from leaking into the rest of the process.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model, _, preprocess = open_clip.create_model_and_transforms(
                    cfg.model,
                    pretrained=weights,
                    device="cpu",
                    precision="fp32",
                    cache_dir=cfg.cache_dir,
                    # Never fetch separate tower weights: the daemon loads a whole
                    # CLIP checkpoint or, with `none`, nothing at all.
                    pretrained_image=False,
                    pretrained_text=False,
                    image_mean=preprocess_cfg.get("mean"),
                    image_std=preprocess_cfg.get("std"),
                    image_interpolation=preprocess_cfg.get("interpolation"),
                    image_resize_mode=preprocess_cfg.get("resize_mode"),
                )
            tokenizer = open_clip.get_tokenizer(cfg.model, cache_dir=cfg.cache_dir)
        except (
            OSError,
            RuntimeError,
            ValueError,
            KeyError,
            EOFError,
            IndexError,  # torch's unpickler on a file that is not a checkpoint at all
            AssertionError,  # open_clip asserts shapes when a checkpoint is another model's
            pickle.UnpicklingError,
            SafetensorError,
        ) as exc:
            raise ModelUnavailable(
                f"could not load CLIP {cfg.model} weights from {weights}: {exc}",
                hint="Check that clip.pretrained is a complete weights file for clip.model, "
                "then send SIGHUP (systemctl reload imgtrain).",
            ) from exc
        model.eval()
        self._dtype = dtype
        self._model, self._preprocess, self._tokenizer = model, preprocess, tokenizer
        self.device = device
        size = self._input_size()
        try:
            model.to(device.torch)
            # Only the image tower runs in bulk; the text tower stays fp32 for
            # search quality and is cheap either way.
            model.visual.to(self._dtype)
            # One forward pass: the embedding size straight from the model, and a
            # model that cannot run fails here rather than in the middle of a batch.
            with torch.inference_mode():
                zeros = torch.zeros(1, 3, *size, dtype=self._dtype, device=device.torch)
                probe = model.encode_image(zeros)
        except RuntimeError as exc:  # CUDA out of memory, a driver error, an unsupported dtype
            raise DeviceUnavailable(
                f"CLIP {cfg.model} cannot run on {device.describe()} in "
                f"{dtype_name(dtype)} (device: {device.requested}): {exc}",
                hint="Free the GPU's memory, or set device: cpu or another clip.precision in "
                "config.yaml; then send SIGHUP (systemctl reload imgtrain).",
            ) from exc
        self._dim = int(probe.shape[-1])
        log.info(
            "CLIP %s loaded in %.1fs on %s (dim %d, %s, batch %d, %d threads)",
            self.model_name,
            time.monotonic() - t0,
            device.describe(),
            self._dim,
            dtype_name(dtype),
            clip_batch_size(cfg, device),
            torch.get_num_threads(),
        )
        if self._random:
            log.warning(
                "CLIP %s has RANDOM WEIGHTS (clip.pretrained: none): image and text "
                "embeddings carry no meaning and search results are meaningless",
                cfg.model,
            )

    def _input_size(self) -> tuple[int, int]:
        size = self._model.visual.preprocess_cfg.get("size", 224)
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def _register_architecture(self, open_clip: Any) -> None:
        cfg = self.cfg
        if cfg.model_config_path:
            path = Path(cfg.model_config_path)
            if not path.is_file():
                raise ModelUnavailable(f"clip.model_config file {path} does not exist")
            try:
                open_clip.add_model_config(path)
            except ValueError as exc:  # json.JSONDecodeError
                raise ModelUnavailable(
                    f"clip.model_config {path} is not valid JSON: {exc}"
                ) from exc
        if cfg.model not in open_clip.list_models():
            defined = (
                f" ({cfg.model_config_path} defines {Path(cfg.model_config_path).stem!r})"
                if cfg.model_config_path
                else ""
            )
            raise ModelUnavailable(
                f"unknown CLIP architecture {cfg.model!r}{defined}",
                hint="Set clip.model to a name from open_clip.list_models(), or point "
                "clip.model_config at an architecture JSON named <clip.model>.json.",
            )

    def _resolve_weights(self, open_clip: Any) -> tuple[str | None, dict[str, Any]]:
        """(a local weights file or None for random, the tag's preprocessing settings)."""
        cfg = self.cfg
        value = cfg.pretrained.strip()
        if self._random:
            return None, {}
        tag_cfg = None if path_like(value) else open_clip.get_pretrained_cfg(cfg.model, value)
        if tag_cfg:
            imported = slot_file(self.models_dir, cfg.model, value)
            if imported is not None:
                return str(imported), tag_cfg
            return self._tag_file(open_clip, value, tag_cfg), tag_cfg
        path = Path(value).expanduser()
        if path.is_file():
            return str(path), {}
        if path_like(value):
            raise ModelUnavailable(
                f"CLIP weights file {path} does not exist",
                hint=f"Put the {cfg.model} weights at {path} (or fix clip.pretrained), then "
                "send SIGHUP (systemctl reload imgtrain).",
            )
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.model))
        raise ModelUnavailable(
            f"clip.pretrained {value!r} is neither an open_clip tag for {cfg.model} nor a file",
            hint=(f"Use a tag ({tags}), " if tags else "Use ")
            + "a path to a weights file, or `none` for random weights.",
        )

    def _tag_file(self, open_clip: Any, tag: str, tag_cfg: dict[str, Any]) -> str:
        """The tag's weights as a local file: from the cache, else downloaded.

        Offline, open_clip's own download retries for about 47 seconds before
        failing; one short request first turns that into a second or two.
        """
        from huggingface_hub import constants as hf_constants
        from huggingface_hub import get_hf_file_metadata
        from huggingface_hub.utils import httpx as hf_httpx

        cfg = self.cfg
        cache = cfg.cache_dir or hf_constants.HF_HUB_CACHE
        source = tag_source(tag_cfg)
        slot = tag_slot(self.models_dir, cfg.model, tag) if self.models_dir else None
        hint = (
            "Run `imgtrain models download` where the hub can be reached; without internet, "
            f"download {source} on another machine, copy it here and run `imgtrain models "
            f"import FILE`" + (f" (it goes to {slot.parent}/)" if slot else "") + ", or set "
            "clip.pretrained to that file; then send SIGHUP (systemctl reload imgtrain)."
        )
        where = f"{slot.parent} or {cache}" if slot else str(cache)
        t0 = time.monotonic()
        if tag_cfg.get("hf_hub"):
            cached = cached_tag_file(cfg, tag_cfg)
            if cached is not None:
                return cached
            if hf_constants.HF_HUB_OFFLINE:
                raise ModelUnavailable(
                    f"CLIP weights {cfg.model}/{tag} are not in {where} and HF_HUB_OFFLINE is set",
                    hint=hint,
                )
            try:
                get_hf_file_metadata(source, timeout=PROBE_TIMEOUT)
            except (OSError, hf_httpx.HTTPError) as exc:
                raise ModelUnavailable(
                    f"CLIP weights {cfg.model}/{tag} are not in {where} and "
                    f"{source} cannot be reached ({exc}; gave up after "
                    f"{time.monotonic() - t0:.1f}s)",
                    hint=hint,
                ) from exc
        log.info("downloading CLIP weights %s/%s from %s", cfg.model, tag, source)
        try:
            return str(open_clip.download_pretrained(tag_cfg, cache_dir=cfg.cache_dir))
        except (OSError, RuntimeError, hf_httpx.HTTPError) as exc:
            raise ModelUnavailable(
                f"could not download CLIP weights {cfg.model}/{tag} from {source} after "
                f"{time.monotonic() - t0:.1f}s: {exc}",
                hint=hint,
            ) from exc

    # -- inference ------------------------------------------------------------
    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """The model's validation transform (resize, centre crop, normalise), as a tensor.

        Thread-safe and free of model state, so the pipeline runs it in its
        decode workers while the model embeds the previous chunk. A photo
        larger than twice the model's input on both sides is first shrunk by
        an integer box filter (Pillow's `reduce`, what `reducing_gap` does):
        the model's bicubic resize then reads 4-9x fewer pixels, and the
        input differs from the direct resize by about 0.004 of a normalised
        unit on average (embedding cosine >= 0.9999, bench/bench_clip.py).
        """
        self.load()
        tw, th = self._input_size()
        factor = min(img.width // (2 * tw), img.height // (2 * th))
        if factor >= 2:
            img = img.reduce(factor)
        return self._preprocess(img)

    def preprocess_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """`preprocess` for a uint8 3xHxW tensor (a photo decoded on the GPU), on its device.

        Resize, crop and normalise run where the pixels are; the result stays
        within a small tolerance of `preprocess` on the same photo decoded by
        Pillow (tests/unit/test_gpu_decode.py). A resize mode not done on
        tensors goes through open_clip's own transform on a host copy.
        """
        from daemon.imaging.gpu import clip_input, to_pil

        self.load()
        cfg = self._model.visual.preprocess_cfg
        x = clip_input(pixels, self._input_size(), cfg)
        return x if x is not None else self.preprocess(to_pil(pixels))

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, each row L2-normalised."""
        return self.embed_tensors([self.preprocess(img) for img in images])

    def embed_tensors(self, tensors: list[torch.Tensor]) -> np.ndarray:
        """(n, dim) float32 for tensors from `preprocess`, each row L2-normalised."""
        import torch

        self.load()
        out = np.empty((len(tensors), self._dim), dtype=np.float32)
        step = self.batch_size
        where = self.device.torch if self.device else "cpu"
        with torch.inference_mode():
            for start in range(0, len(tensors), step):
                chunk = [t.to(where, non_blocking=True) for t in tensors[start : start + step]]
                x = torch.stack(chunk).to(self._dtype)
                out[start : start + len(chunk)] = self._normalise(self._model.encode_image(x))
        return out

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(n, dim) float32, each row L2-normalised; comparable with embed_images."""
        import torch

        self.load()
        if not texts:
            return np.empty((0, self._dim), dtype=np.float32)
        where = self.device.torch if self.device else "cpu"
        with torch.inference_mode():
            tokens = self._tokenizer(texts).to(where)
            return self._normalise(self._model.encode_text(tokens))

    @staticmethod
    def _normalise(feats: torch.Tensor) -> np.ndarray:
        import torch

        feats = feats.float()  # normalise in fp32 whatever the tower ran in
        unit = torch.nn.functional.normalize(feats, dim=-1).cpu()
        return unit.numpy().astype(np.float32, copy=False)
