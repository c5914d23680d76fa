"""Face detection, alignment and embedding with an insightface model pack.

A pack is a directory of ONNX files (insightface's `buffalo_l` holds five).
The daemon needs two of them: a detector with 5 landmarks (SCRFD) and a
recognizer (ArcFace-style). Files are told apart the way insightface's
ModelRouter does it, from their input and output shapes, so any pack laid
out like insightface's works. Sessions come from `make_ort_session` and are
handed to insightface's own SCRFD and ArcFaceONNX classes, so thread counts
and providers are ours while the pre- and post-processing is insightface's.
On a CUDA `device` the sessions ask for onnxruntime's CUDA provider
(`daemon.models.device.ort_providers`); `providers` says what they got.

The models are small (a 640x640 detector, a 112x112 recognizer), so one
onnxruntime thread per image, with `faces.threads` images at a time, keeps the
cores busier than several threads on one image: on 2 cores, 1.3x the images
per second (bench/bench_faces.py). Sessions are safe to run from several
threads at once, and insightface's pre- and post-processing keeps no
per-image state on the model objects.
"""

from __future__ import annotations

import logging
import math
import os
import time
import zipfile
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from daemon.errors import ModelUnavailable
from daemon.imaging.decode import to_bgr
from daemon.models.base import InferenceModel, default_threads, make_ort_session
from daemon.models.device import CUDA_PROVIDER, Device, ort_providers, resolve_device

if TYPE_CHECKING:
    import onnxruntime
    from PIL import Image

    from daemon.config import FacesConfig

log = logging.getLogger(__name__)

PACK_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/{pack}.zip"
NMS_THRESHOLD = 0.4  # insightface's default for SCRFD
DET_STRIDE = 32  # SCRFD's coarsest feature stride: its input sides must be multiples
PROBE_TIMEOUT = 10.0  # seconds for the request that tells whether the release server answers


@dataclass
class Face:
    bbox: tuple[float, float, float, float]  # x1, y1, x2, y2 in original image pixels
    landmarks: list[list[float]]  # 5 x [x, y]: eyes, nose, mouth corners (original pixels)
    score: float
    area: float  # original pixels squared
    embedding: np.ndarray  # float32, L2-normalised


def model_task(session: onnxruntime.InferenceSession) -> str | None:
    """What insightface's ModelRouter would build from this model, by its shapes."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape
    if len(outputs) >= 5:
        return "detection"
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:4]):
        return None
    side = shape[2]
    if shape[2] != shape[3] or side in (192, 96) or len(inputs) != 1:
        return None  # landmark (192), gender/age (96) or face swap models
    return "recognition" if side >= 112 and side % 16 == 0 else None


def _import_insightface() -> tuple[Any, Any, Any]:
    # insightface imports albumentations, which otherwise asks PyPI for a newer
    # version of itself on every import, network or not.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from insightface.model_zoo import SCRFD, ArcFaceONNX
    from insightface.utils import face_align

    return SCRFD, ArcFaceONNX, face_align


class FaceAnalyzer(InferenceModel):
    """Finds faces in a BGR image and embeds each one."""

    def __init__(self, cfg: FacesConfig, device: str = "cpu") -> None:
        super().__init__(f"faces:{cfg.model_pack}")
        self.cfg = cfg
        self.device_setting = device  # the config's `device`, resolved when loading
        self.device: Device | None = None
        self.providers: list[str] = []  # what onnxruntime runs the sessions on, once loaded
        self._ask: list[Any] = []
        self.model_name = ""
        self._dim = 0
        self._det: Any = None
        self._rec: Any = None
        self._align: Any = None
        self._one_at_a_time = False
        self._det_dynamic = False
        self.files: tuple[Path, Path] | None = None  # (detector, recognizer) once loaded
        self.parallel = cfg.threads if cfg.threads > 0 else default_threads()

    @property
    def dim(self) -> int:
        self.load()
        return self._dim

    def pack_dir(self) -> Path:
        """Where the pack is (or should be): faces.model_dir, else <model_root>/models/<pack>."""
        if self.cfg.model_dir:
            return Path(self.cfg.model_dir).expanduser()
        return Path(self.cfg.model_root).expanduser() / "models" / self.cfg.model_pack

    # -- loading --------------------------------------------------------------
    def _load(self) -> None:
        scrfd_cls, arcface_cls, face_align = _import_insightface()
        t0 = time.monotonic()
        device = resolve_device(self.device_setting)
        choice = ort_providers(device)
        if choice.warning:
            log.warning("%s", choice.warning)
        self._ask = choice.providers
        pack = self._find_pack()
        (det_path, det_session), (rec_path, rec_session) = self._pick_models(pack)
        det = scrfd_cls(model_file=str(det_path), session=det_session)
        if not det.use_kps:
            raise ModelUnavailable(
                f"face detector {det_path} gives no landmarks, so faces cannot be aligned",
                hint="Use an SCRFD detector with keypoints (det_*.onnx from an insightface pack).",
            )
        side = self.cfg.det_size
        det.prepare(0, input_size=(side, side), det_thresh=self.cfg.min_confidence)
        det.nms_thresh = NMS_THRESHOLD
        det_shape = det_session.get_inputs()[0].shape
        self._det_dynamic = not all(isinstance(d, int) for d in det_shape[2:])
        rec = arcface_cls(model_file=str(rec_path), session=rec_session)
        out = rec_session.get_outputs()[0].shape
        self._det, self._rec, self._align = det, rec, face_align
        self.files = (det_path, rec_path)
        # A recognizer exported with batch size 1 cannot take all faces in one call.
        self._one_at_a_time = isinstance(rec.input_shape[0], int)
        if isinstance(out[-1], int):
            self._dim = out[-1]
        else:
            blank = np.zeros((rec.input_size[1], rec.input_size[0], 3), dtype=np.uint8)
            self._dim = int(rec.get_feat([blank]).shape[-1])
        pack_name = self.cfg.model_pack if not self.cfg.model_dir else pack.name
        self.model_name = f"{pack_name}:{det_path.stem}+{rec_path.stem}"
        self.device, self.providers = device, list(det_session.get_providers())
        if device.is_cuda and choice.warning is None and CUDA_PROVIDER not in self.providers:
            # onnxruntime falls back by itself when its CUDA provider cannot start
            # (cuDNN missing, say), after printing why; the log says it once more.
            log.warning(
                "face models run on %s: onnxruntime could not start %s on %s (see its "
                "messages above)",
                ", ".join(self.providers),
                CUDA_PROVIDER,
                device.torch,
            )
        log.info(
            "face models %s loaded from %s in %.1fs (dim %d, det_size %d, %s)",
            self.model_name,
            pack,
            time.monotonic() - t0,
            self._dim,
            side,
            ", ".join(self.providers),
        )

    def _find_pack(self) -> Path:
        cfg = self.cfg
        pack = self.pack_dir()
        if cfg.model_dir:
            if not pack.is_dir():
                raise ModelUnavailable(
                    f"faces.model_dir {pack} does not exist",
                    hint=f"Create {pack} and put a face detector (det_*.onnx) and a recognizer "
                    "(.onnx) in it, or fix faces.model_dir; then systemctl reload imgtrain.",
                )
            return pack
        if pack.is_dir() and any(pack.glob("*.onnx")):
            return pack
        url = PACK_URL.format(pack=cfg.model_pack)
        hint = (
            f"Run `imgtrain models download` where {url} can be reached; without internet, "
            f"download it on another machine, copy it here and run `imgtrain models import "
            f"{cfg.model_pack}.zip` (it unpacks into {pack}); then send SIGHUP "
            "(systemctl reload imgtrain)."
        )
        if not cfg.download:
            raise ModelUnavailable(
                f"face model pack {cfg.model_pack!r} is not in {pack} and faces.download is off",
                hint=hint,
            )
        import requests
        from insightface.utils.storage import ensure_available

        t0 = time.monotonic()
        log.info("downloading face model pack %s from %s", cfg.model_pack, url)
        try:
            # insightface's downloader sets no timeout, so a network that drops
            # packets would hang it for minutes; one bounded request goes first.
            requests.head(url, timeout=PROBE_TIMEOUT, allow_redirects=False).raise_for_status()
            ensure_available("models", cfg.model_pack, root=str(pack.parent.parent))
        except (OSError, RuntimeError, zipfile.BadZipFile) as exc:
            raise ModelUnavailable(
                f"face model pack {cfg.model_pack!r} is not in {pack} and downloading it failed "
                f"after {time.monotonic() - t0:.1f}s: {exc}",
                hint=hint,
            ) from exc
        return pack

    def _pick_models(
        self, pack: Path
    ) -> tuple[
        tuple[Path, onnxruntime.InferenceSession], tuple[Path, onnxruntime.InferenceSession]
    ]:
        threads = 1  # per image; `parallel` images run at once (see the module's docstring)
        det: tuple[Path, Any] | None = None
        rec: tuple[Path, Any] | None = None
        if self.cfg.detector:
            path = Path(self.cfg.detector).expanduser()
            path = path if path.is_absolute() else pack / path
            session = make_ort_session(path, threads, self._ask)
            if model_task(session) != "detection":
                raise ModelUnavailable(f"faces.detector {path} is not a face detection model")
            det = (path, session)
        for path in sorted(pack.glob("*.onnx")):
            if det is not None and rec is not None:
                break
            if det is not None and path == det[0]:
                continue
            session = make_ort_session(path, threads, self._ask)
            task = model_task(session)
            if task == "detection" and det is None:
                det = (path, session)
            elif task == "recognition" and rec is None:
                rec = (path, session)
        if det is None or rec is None:
            missing = "face detector (det_*.onnx)" if det is None else "face recognizer"
            found = ", ".join(p.name for p in sorted(pack.glob("*.onnx"))) or "no .onnx files"
            raise ModelUnavailable(
                f"face model pack {pack} has no {missing} (found: {found})",
                hint=f"Put the pack's detector and recognizer .onnx files in {pack}, then send "
                "SIGHUP (systemctl reload imgtrain).",
            )
        return det, rec

    # -- inference ------------------------------------------------------------
    def analyze_images(self, images: Sequence[tuple[Image.Image, float]]) -> Iterator[list[Face]]:
        """analyze() for each (RGB image, scale), `parallel` at a time; results in order.

        At most 2 x `parallel` images are converted to BGR at any moment, so
        memory stays flat however long the list. A consumer that stops early
        cancels what has not started.
        """
        self.load()
        if self.parallel == 1 or len(images) <= 1:
            for img, scale in images:
                yield self._analyze_rgb(img, scale)
            return
        pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="faces")
        try:
            todo = iter(images)
            ahead: deque[Future[list[Face]]] = deque()
            for img, scale in todo:
                ahead.append(pool.submit(self._analyze_rgb, img, scale))
                if len(ahead) >= 2 * self.parallel:
                    yield ahead.popleft().result()
            while ahead:
                yield ahead.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _analyze_rgb(self, img: Image.Image, scale: float) -> list[Face]:
        return self.analyze(to_bgr(img), scale)

    def analyze(self, bgr: np.ndarray, scale: float = 1.0) -> list[Face]:
        """Faces in `bgr` (a possibly reduced decode: `scale` = its size / the original's).

        Coordinates come back in original-image pixels, faces sorted left to
        right (then top to bottom) so their numbering is the same on every run.
        """
        self.load()
        boxes, kpss = self._det.detect(bgr, input_size=self._det_input(bgr.shape), max_num=0)
        if boxes.shape[0] == 0:
            return []
        height, width = bgr.shape[0] / scale, bgr.shape[1] / scale
        kept = []
        for box, kps in zip(boxes, kpss, strict=True):
            x1, y1, x2, y2 = (float(v) / scale for v in box[:4])
            x1, x2 = max(0.0, x1), min(width, x2)
            y1, y2 = max(0.0, y1), min(height, y2)
            score = float(box[4])
            if score < self.cfg.min_confidence or min(x2 - x1, y2 - y1) < self.cfg.min_face_size:
                continue
            kept.append(((x1, y1, x2, y2), score, kps))
        kept.sort(key=lambda k: (round(k[0][0], 1), round(k[0][1], 1)))
        if not kept:
            return []
        side = self._rec.input_size[0]
        crops = [self._align.norm_crop(bgr, landmark=kps, image_size=side) for _, _, kps in kept]
        feats = self._embed(crops)
        return [
            Face(
                bbox=bbox,
                landmarks=[[float(x) / scale, float(y) / scale] for x, y in kps],
                score=score,
                area=(bbox[2] - bbox[0]) * (bbox[3] - bbox[1]),
                embedding=feat,
            )
            for (bbox, score, kps), feat in zip(kept, feats, strict=True)
        ]

    def _det_input(self, shape: tuple[int, ...]) -> tuple[int, int] | None:
        """The detector's input (width, height) for an image of `shape`.

        insightface scales the image to fit det_size x det_size and pads the
        rest with black, so a 3:2 photo spends a third of the detector's work
        on padding. A detector with a dynamic input size is given the fitted
        rectangle instead (rounded up to its 32-pixel stride): the same pixels
        at the same scale, 30% less work. A fixed-size detector keeps its size.
        """
        if not self._det_dynamic:
            return None
        side = self.cfg.det_size
        h, w = shape[:2]
        if w >= h:
            return side, min(side, _round_up(side * h / w, DET_STRIDE))
        return min(side, _round_up(side * w / h, DET_STRIDE)), side

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if self._one_at_a_time and len(crops) > 1:
            feats = np.concatenate([self._rec.get_feat([crop]) for crop in crops])
        else:
            feats = self._rec.get_feat(crops)
        feats = np.asarray(feats, dtype=np.float32).reshape(len(crops), -1)
        norms = np.linalg.norm(feats, axis=1, keepdims=True)
        return feats / np.maximum(norms, 1e-12)


def _round_up(value: float, step: int) -> int:
    return max(step, math.ceil(value / step) * step)
