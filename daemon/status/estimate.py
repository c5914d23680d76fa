"""How long the rest of the work will take: the ETA's model, pure and clock-free.

The remaining time is estimated from what the remaining work is made of, not
from a count of steps:

* `decode`: CPU seconds to decode one photo, from its header (`daemon.imaging.cost`):
  a constant, per megapixel decoded (after JPEG DCT scaling), per megapixel
  resized down to `decode.max_side`, per megabyte of file. Learned from every
  photo the decode workers time.
* `wall`: the wall seconds between two progress reports, from what happened in
  them: per step of the reporting phase (an image, or a clustering sub-step),
  per face found, and per CPU second the decode workers spent meanwhile (they
  run ahead of the models and share the cores with them). Decoding is its own
  stream of work: what is left of it is the photos not decoded yet, so the
  last chunks of a batch, decoded ahead, are foreseen to go faster.

Each is a least-squares regression pulled toward a prior (so a fresh library
starts from sane guesses, and a direction the photos never varied in stays at
its prior), with coefficients kept non-negative and a bounded memory (old runs
fade). The ledger remembers them between runs (`memory()`, `load()`).

For the current batch, its own observed rate, an exponentially weighted ratio
of measured to predicted seconds over its recent reports, multiplies the
model's prediction; it outweighs the remembered model once the batch has
done a chunk or two. That rate is what follows a machine that got busier, or
photos unlike any seen before.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from daemon.vocab import PHASES

DECODE_FEATURES = ("photo", "mpx", "resized_mpx", "mb")
WALL_FEATURES = (
    "embedding_steps",
    "faces_steps",
    "faces_found",
    "clustering_steps",
    "clustering_faces",
    "decode_cpu_seconds",
)
STEP_SLOTS = (0, 1, 3)

# Priors: where a fresh library starts (seconds), and each feature's typical size per
# report, which scales how strongly the prior holds (PRIOR_WEIGHT reports' worth).
DECODE_PRIOR = (0.003, 0.004, 0.012, 0.008)
DECODE_SCALE = (1.0, 2.0, 2.0, 2.0)
WALL_PRIOR = (0.05, 0.03, 0.01, 0.1, 0.001, 0.5)
WALL_SCALE = (1.0, 1.0, 1.0, 1.0, 20.0, 1.0)
PRIOR_WEIGHT = 1.0
MEMORY = 3000.0  # steps (or photos) a regression remembers; older ones fade in proportion
FACES_PRIOR = 0.3  # faces per image before any was seen
FACES_WEIGHT = 32.0  # images of the batch needed to outweigh the remembered faces per image
RATE_TAU = 96.0  # steps: how fast a batch's observed rate forgets its older reports
RATE_KEEP = 512  # reports kept for the rate
OVERHEAD_PRIOR = 1.5  # seconds per batch beyond its phases' work: starting, finishing
OVERHEAD_ALPHA = 0.2  # its smoothing from batch to batch, once a few batches are in


def _nonnegative_ridge(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """argmin θ'Mθ - 2θ'v over θ >= 0, for a few dimensions: every support, best feasible."""
    n = len(v)
    best, best_obj = np.zeros(n), 0.0
    for size in range(1, n + 1):
        for support in itertools.combinations(range(n), size):
            idx = list(support)
            try:
                sub = np.linalg.solve(m[np.ix_(idx, idx)], v[idx])
            except np.linalg.LinAlgError:
                continue
            if np.any(sub < 0):
                continue
            theta = np.zeros(n)
            theta[idx] = sub
            obj = float(theta @ m @ theta - 2 * theta @ v)
            if obj < best_obj:
                best, best_obj = theta, obj
    return best


class Regression:
    """seconds ≈ coef · x, least squares with a prior, coef >= 0, bounded memory."""

    def __init__(
        self, prior: tuple[float, ...], scale: tuple[float, ...], steps: tuple[int, ...] = (0,)
    ) -> None:
        self.prior = np.asarray(prior, dtype=float)
        self.penalty = PRIOR_WEIGHT * np.asarray(scale, dtype=float) ** 2
        self.steps = list(steps)  # the features that count steps, for the memory's bound
        n = len(prior)
        self.xtx = np.zeros((n, n))
        self.xty = np.zeros(n)
        self.count = 0.0  # steps (first feature) observed, after fading
        self._coef: np.ndarray | None = None

    def observe(self, x: np.ndarray, seconds: float) -> None:
        self.xtx += np.outer(x, x)
        self.xty += x * seconds
        self.count += float(x[self.steps].sum())
        if self.count > MEMORY:
            fade = MEMORY / self.count
            self.xtx *= fade
            self.xty *= fade
            self.count = MEMORY
        self._coef = None

    def coef(self) -> np.ndarray:
        if self._coef is None:
            m = self.xtx + np.diag(self.penalty)
            self._coef = _nonnegative_ridge(m, self.xty + self.penalty * self.prior)
        return self._coef

    def predict(self, x: np.ndarray) -> float:
        return float(max(self.coef() @ x, 0.0))

    def dump(self) -> dict:
        return {"xtx": self.xtx.tolist(), "xty": self.xty.tolist(), "count": self.count}

    def load(self, data: dict) -> None:
        xtx, xty = np.asarray(data["xtx"], float), np.asarray(data["xty"], float)
        if xtx.shape == self.xtx.shape and xty.shape == self.xty.shape:
            self.xtx, self.xty, self.count = xtx, xty, float(data["count"])
            self._coef = None


class Rate:
    """The current batch's measured/predicted ratio, exponentially weighted by steps."""

    def __init__(self, prior_steps: float) -> None:
        self.prior_steps = prior_steps
        self.obs: deque[tuple[np.ndarray, float, float]] = deque(maxlen=RATE_KEEP)
        self.steps = 0.0

    def observe(self, x: np.ndarray, seconds: float) -> None:
        self.steps += float(x[list(STEP_SLOTS)].sum())
        self.obs.append((x, seconds, self.steps))

    def sums(self, model: Regression) -> tuple[float, float]:
        """Recent measured and predicted seconds, exponentially weighted by age in steps."""
        if not self.obs:
            return 0.0, 0.0
        xs = np.stack([o[0] for o in self.obs])
        seconds = np.asarray([o[1] for o in self.obs])
        w = np.exp(-(self.steps - np.asarray([o[2] for o in self.obs])) / RATE_TAU)
        return float(w @ seconds), float(w @ np.maximum(xs @ model.coef(), 0.0))

    def factor(self, model: Regression) -> float:
        measured, predicted = self.sums(model)
        if predicted <= 1e-9:
            return 1.0
        trust = self.steps / (self.steps + self.prior_steps)
        return (1.0 - trust) + trust * measured / predicted


@dataclass
class PhaseWork:
    """Work of one phase: steps, and the faces found in them (or to be found)."""

    steps: float = 0.0
    faces: float | None = None  # faces found; None: expected from the faces per image
    images: float = 0.0  # for a batch phase: the images whose faces it will group

    def __add__(self, other: PhaseWork) -> PhaseWork:
        if self.faces is None and other.faces is None:
            faces = None
        else:
            faces = (self.faces or 0.0) + (other.faces or 0.0)
        return PhaseWork(self.steps + other.steps, faces, self.images + other.images)


class BatchWork:
    """The current batch's photos still to process: per image phase the files in the
    order the pipeline takes them, and each photo's decode features."""

    def __init__(
        self,
        rows: dict[str, list[tuple[int, str, tuple[float, ...]]]] | None = None,
    ) -> None:
        # rows: phase -> [(image_id, file name, decode features)].
        self.names: dict[str, list[str]] = {}
        self.by_image: dict[int, tuple[float, ...]] = {}
        for phase, items in (rows or {}).items():
            self.names[phase] = [name for _, name, _ in items]
            self.by_image.update({i: f for i, _, f in items})
        self.decode = np.zeros(len(DECODE_FEATURES))  # every photo to decode, summed
        for features in self.by_image.values():
            self.decode += np.asarray(features, dtype=float)

    def name(self, phase: str, index: int) -> str | None:
        names = self.names.get(phase, [])
        return names[index] if 0 <= index < len(names) else None


# Where each phase's work sits in the wall-time regression: (steps, faces) slots.
SLOTS: dict[str, tuple[int, int | None]] = {
    "embedding": (0, None),
    "faces": (1, 2),
    "clustering": (3, 4),
}
DECODE_SLOT = 5


class Estimator:
    """The wall-time and decode models, the current batch's rates, faces per image."""

    def __init__(self, steps_prior: dict[str, float] | None = None, chunk: int = 32) -> None:
        self.decode = Regression(DECODE_PRIOR, DECODE_SCALE)
        prior = list(WALL_PRIOR)
        for phase, cost in (steps_prior or {}).items():
            if phase in SLOTS:
                prior[SLOTS[phase][0]] = cost
        self.wall = Regression(tuple(prior), WALL_SCALE, steps=STEP_SLOTS)
        self.chunk = chunk
        self.faces_per_image = FACES_PRIOR
        self.overhead = OVERHEAD_PRIOR
        self.overhead_batches = 0  # batches the overhead was learned from
        self.rates = {p: Rate(chunk) for p in PHASES}
        self.batch_faces = 0.0
        self.batch_face_images = 0.0

    # -- a batch -------------------------------------------------------------
    def begin_batch(self) -> None:
        self.rates = {p: Rate(self.chunk) for p in PHASES}
        self.batch_faces = self.batch_face_images = 0.0

    def end_batch(self, unattributed_seconds: float | None) -> None:
        """Fold the batch into what is remembered: faces per image and the overhead."""
        if self.batch_face_images:
            self.faces_per_image = self.expected_faces()
        if unattributed_seconds is not None:
            # A mean over the first batches (the prior counts as one), then an EWMA.
            weight = max(1.0 / (self.overhead_batches + 2), OVERHEAD_ALPHA)
            self.overhead += weight * (max(unattributed_seconds, 0.0) - self.overhead)
            self.overhead_batches += 1

    # -- observations --------------------------------------------------------
    def observe_decode(self, features: tuple[float, ...], cpu_seconds: float) -> None:
        self.decode.observe(np.asarray(features, dtype=float), cpu_seconds)

    def vector(self, phase: str, work: PhaseWork, decode_cpu: float = 0.0) -> np.ndarray:
        x = np.zeros(len(WALL_FEATURES))
        steps_slot, faces_slot = SLOTS[phase]
        x[steps_slot] = work.steps
        if faces_slot is not None:
            faces = work.faces
            if faces is None:
                faces = self.expected_faces() * (work.steps if phase == "faces" else work.images)
            x[faces_slot] = faces
        x[DECODE_SLOT] = decode_cpu
        return x

    def observe(self, phase: str, work: PhaseWork, seconds: float, decode_cpu: float) -> None:
        """`seconds` of wall time went into `work` (its faces known) in `phase`, while the
        decode workers spent `decode_cpu` CPU seconds."""
        x = self.vector(phase, work, decode_cpu)
        self.wall.observe(x, seconds)
        self.rates[phase].observe(x, seconds)
        if phase == "faces" and work.faces is not None:
            self.batch_faces += work.faces
            self.batch_face_images += work.steps

    # -- predictions ---------------------------------------------------------
    def expected_faces(self) -> float:
        """Faces per image still to be analysed: the batch's own count, from a remembered prior."""
        return (FACES_WEIGHT * self.faces_per_image + self.batch_faces) / (
            FACES_WEIGHT + self.batch_face_images
        )

    def rate(self, phase: str) -> float:
        """The batch's own rate for `phase`; for a phase it has not run yet (clustering,
        until its first step), the rate of the phases it has run: a busier machine
        slows them all."""
        if self.rates[phase].obs:
            return self.rates[phase].factor(self.wall)
        measured = predicted = steps = 0.0
        for r in self.rates.values():
            m, pr = r.sums(self.wall)
            measured, predicted, steps = measured + m, predicted + pr, steps + r.steps
        if predicted <= 1e-9:
            return 1.0
        trust = steps / (steps + self.chunk)
        return (1.0 - trust) + trust * measured / predicted

    def seconds(self, phase: str, work: PhaseWork) -> float:
        """Wall seconds `work` of `phase` will take, decoding aside."""
        if work.steps <= 0:
            return 0.0
        return self.rate(phase) * self.wall.predict(self.vector(phase, work))

    def predict(self, phase: str, work: PhaseWork, decode_cpu: float) -> float:
        """Wall seconds a report of `work` with `decode_cpu` decoding in it should take."""
        return self.rate(phase) * self.wall.predict(self.vector(phase, work, decode_cpu))

    def decode_seconds(self, decode_sums: np.ndarray) -> float:
        """Wall seconds decoding these photos adds (their CPU seconds, as the models share
        the cores with the decode workers), at the image phases' rate."""
        cpu = self.decode.predict(decode_sums)
        return self.rate("embedding") * float(self.wall.coef()[DECODE_SLOT]) * cpu

    def cost(self, phase: str) -> float:
        """Seconds one plain step of `phase` is expected to take now."""
        return self.seconds(phase, PhaseWork(steps=1.0))

    # -- memory ------------------------------------------------------------
    def memory(self) -> dict[str, str]:
        """What the ledger keeps, one JSON text per model."""
        return {
            "wall": json.dumps(self.wall.dump()),
            "decode": json.dumps(
                {
                    **self.decode.dump(),
                    "faces_per_image": self.faces_per_image,
                    "overhead": self.overhead,
                    "overhead_batches": self.overhead_batches,
                }
            ),
        }

    def load(self, memory: dict[str, str]) -> None:
        for name, text in memory.items():
            try:
                data = json.loads(text)
                if name == "decode":
                    self.decode.load(data)
                    self.faces_per_image = float(data.get("faces_per_image", FACES_PRIOR))
                    self.overhead = float(data.get("overhead", OVERHEAD_PRIOR))
                    self.overhead_batches = int(data.get("overhead_batches", 0))
                elif name == "wall":
                    self.wall.load(data)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a damaged memory only costs the estimate its history
        if not math.isfinite(self.faces_per_image) or self.faces_per_image < 0:
            self.faces_per_image = FACES_PRIOR
        if not math.isfinite(self.overhead) or self.overhead < 0:
            self.overhead = OVERHEAD_PRIOR
