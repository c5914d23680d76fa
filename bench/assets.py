"""The benchmarks' inputs, made once into bench/.cache/: photos, CLIP weights, a face pack.

Synthetic photos are built to cost what camera photos cost: smooth colour
fields with shapes and sensor-like grain (so a 3000x2000 JPEG at quality 90
weighs about what a phone photo does and decodes as slowly), and in a third of
them one of the real photos from ../shared/photos pasted at a random size, so
the face detector finds real faces of varied sizes and the recognizer runs.

A set is complete only when its manifest exists (written last), so a run that
was interrupted while generating starts again rather than using half a set.

CLIP weights: pretrained weights cannot be downloaded here, so ViT-B-32 is
built with seeded random weights and saved once as a local safetensors file;
the daemon and the plain open_clip baseline both load that file, which takes
the daemon through its real local-weights path. The face pack is a directory
of links to the shared det_2.5g and mobilefacenet_128 models, laid out as
insightface expects (<root>/models/<name>/), so insightface's FaceAnalysis and
the daemon read the very same files.
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

if TYPE_CHECKING:
    from daemon.config import Config

BENCH_DIR = Path(__file__).resolve().parent
CACHE = BENCH_DIR / ".cache"
REPO = BENCH_DIR.parent
WEIGHTS_NAME = "ViT-B-32-random-seed0.safetensors"
VERSION = 1  # bump when the generator changes, so old sets are not reused
FACE_SHARE = 3  # one photo in FACE_SHARE carries a real photo with faces


@dataclass(frozen=True)
class PhotoSet:
    count: int
    width: int
    height: int
    seed: int = 0

    @property
    def directory(self) -> Path:
        return CACHE / f"photos-v{VERSION}-{self.count}x{self.width}x{self.height}-s{self.seed}"

    def paths(self) -> list[Path]:
        """The set's files, generating them first if needed."""
        manifest = self.directory / "manifest.json"
        if not manifest.exists():
            generate(self)
        names = json.loads(manifest.read_text())["files"]
        return [self.directory / n for n in names]


FULL = PhotoSet(300, 3000, 2000)
QUICK = PhotoSet(24, 1500, 1000)
SMALL = PhotoSet(110, 800, 600, seed=1)  # warm-up and many-small-batches runs


def shared_dir() -> Path:
    root = Path(os.environ.get("IMGTRAIN_SHARED", REPO.parent / "shared"))
    if not (root / "photos").is_dir() or not (root / "models" / "faces").is_dir():
        raise SystemExit(
            f"{root} has no photos/ or models/faces/: the benchmarks need the shared data "
            "beside the repository (../shared) or IMGTRAIN_SHARED pointing at it"
        )
    return root


def shared_photos() -> list[Path]:
    """The real photos, in a fixed order (JPEG and PNG)."""
    root = shared_dir() / "photos"
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def clip_weights() -> Path:
    """ViT-B-32 with seeded random weights, as a local weights file (made once)."""
    path = CACHE / WEIGHTS_NAME
    if path.exists():
        return path
    import open_clip
    import torch
    from safetensors.torch import save_file

    print(f"saving seeded random ViT-B-32 weights to {path} (once)")
    CACHE.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path


FACE_ROOT = CACHE / "insightface"
FACE_PACK_NAME = "bench-pack"
FACE_MODELS = ("det_2.5g.onnx", "mobilefacenet_128.onnx")


def face_pack() -> Path:
    """<FACE_ROOT>/models/bench-pack: links to the shared detector and recognizer."""
    pack = FACE_ROOT / "models" / FACE_PACK_NAME
    pack.mkdir(parents=True, exist_ok=True)
    for name in FACE_MODELS:
        link = pack / name
        target = shared_dir() / "models" / "faces" / name
        if not link.exists():
            link.unlink(missing_ok=True)  # a dangling link from a moved checkout
            link.symlink_to(target)
    return pack


def generate(spec: PhotoSet) -> None:
    out = spec.directory
    out.mkdir(parents=True, exist_ok=True)
    sources = [str(p) for p in shared_photos()]
    jobs = [(spec, i, sources) for i in range(spec.count)]
    print(f"generating {spec.count} photos of {spec.width}x{spec.height} into {out} (once)")
    workers = max(1, min(4, len(os.sched_getaffinity(0))))
    with ProcessPoolExecutor(workers) as pool:
        names = list(pool.map(_make_one, jobs, chunksize=4))
    (out / "manifest.json").write_text(json.dumps({"spec": spec.__dict__, "files": names}))


def _make_one(job: tuple[PhotoSet, int, list[str]]) -> str:
    spec, index, sources = job
    rng = random.Random(spec.seed * 1_000_003 + index)
    nprng = np.random.default_rng(spec.seed * 1_000_003 + index)
    w, h = spec.width, spec.height
    # Low-frequency colour field: a handful of random values blown up smoothly.
    coarse = nprng.integers(0, 256, size=(rng.randint(3, 8), rng.randint(4, 10), 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(8, 30)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randrange(w // 40, w // 4), y0 + rng.randrange(h // 40, h // 4)
        colour = tuple(rng.randrange(256) for _ in range(3))
        shape = rng.choice((draw.rectangle, draw.ellipse, draw.line))
        if shape is draw.line:
            draw.line([x0, y0, x1, y1], fill=colour, width=rng.randint(2, 30))
        else:
            shape([x0, y0, x1, y1], fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    if index % FACE_SHARE == 0:
        _paste_photo(img, Path(sources[(index // FACE_SHARE) % len(sources)]), rng)
    # Sensor grain: what makes real JPEGs big and slow to decode.
    grain = nprng.normal(0.0, rng.uniform(3.0, 9.0), size=(h, w, 1))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
    name = f"img_{index:04d}.jpg"
    exif = Image.Exif()
    exif[0x0132] = f"2024:{1 + index % 12:02d}:{1 + index % 28:02d} 12:00:00"  # DateTime
    Image.fromarray(pixels, "RGB").save(
        spec.directory / name, "JPEG", quality=90, exif=exif.tobytes()
    )
    return name


def _paste_photo(canvas: Image.Image, source: Path, rng: random.Random) -> None:
    with Image.open(source) as im:
        photo = im.convert("RGB")
    w, h = canvas.size
    longest = rng.uniform(0.3, 0.7) * max(w, h)
    factor = min(longest / max(photo.size), h / photo.height, w / photo.width)
    size = (max(1, round(photo.width * factor)), max(1, round(photo.height * factor)))
    photo = photo.resize(size, Image.Resampling.BICUBIC)
    canvas.paste(photo, (rng.randrange(w - size[0] + 1), rng.randrange(h - size[1] + 1)))


def daemon_config(root: Path, **over: Any) -> dict[str, Any]:
    """The daemon's defaults, with the bench's models and directories under `root`.

    Only what must differ is set: where things live, the local CLIP weights,
    the face pack (no download). Everything else (batch size, threads,
    precision, decode workers and size, status intervals) is the default a
    user gets, because that is what the benchmarks are about.
    """
    cfg: dict[str, Any] = {
        "inbox_dir": str(root / "inbox"),
        "data_dir": str(root / "data"),
        "status_dir": str(root / "status"),
        "clip": {"model": "ViT-B-32", "pretrained": str(clip_weights())},
        "faces": {"model_dir": str(face_pack()), "download": False},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def config(root: Path, **over: Any) -> Config:
    from daemon.config import Config

    return Config.model_validate(daemon_config(root, **over))
