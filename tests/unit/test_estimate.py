"""The ETA's estimator, on simulated step timings: exact, because the progress channel's clock
is moved by hand.

A simulated batch goes through the progress channel the way the pipeline
drives it: decode times reported per photo, the embedding phase reporting a
chunk at a time, the faces phase an image at a time (with the faces found),
clustering by sub-step. Each step takes what a hidden "true" cost model says
(a constant, per second of decoding, per face), with noise; the estimator
never sees that model, only the photos' header features and the time that
passes. Seeds vary the photos, the noise and the faces.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import pytest

from daemon.status.estimate import BatchWork, PhaseWork, Regression
from daemon.status.progress import PhaseCount, Progress
from daemon.vocab import DaemonStatus, PhaseState
from tests.helpers import contradictions

# Header features (photo, decoded Mpx, resized Mpx, MB) of three kinds of photo.
KINDS = {
    "12mp": (1.0, 3.05, 3.05, 3.9),  # 4032x3024: DCT-scaled to 2016x1512, then resized
    "6mp": (1.0, 1.5, 0.0, 1.9),  # 3000x2000: DCT-scaled to 1500x1000, no resize
    "1mp": (1.0, 0.75, 0.0, 0.3),  # 1000x750, small
}
TRUE_DECODE = (0.004, 0.004, 0.015, 0.008)  # CPU seconds per feature
CHUNK = 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decode_cpu(kind: str) -> float:
    return float(np.dot(TRUE_DECODE, KINDS[kind]))


@dataclass
class Run:
    """What a reader sampling the status at 4 Hz saw of one simulated batch."""

    start: float
    end: float = 0.0
    samples: list[tuple[float, dict]] = field(default_factory=list)

    def eta_error(self, at_percent: float) -> float:
        for t, s in self.samples:
            pct = s["overall_progress"]["percentage"]
            if pct is not None and pct >= at_percent:
                actual = self.end - t
                return (s["overall_progress"]["eta_seconds"] - actual) / actual
        raise AssertionError(f"never reached {at_percent}%")

    def worst_gap(self) -> float:
        """Overall percentage minus the share of elapsed time, after the first 5%."""
        gaps = []
        for t, s in self.samples:
            share = 100 * (t - self.start) / (self.end - self.start)
            if share > 5:
                gaps.append(s["overall_progress"]["percentage"] - share)
        return max(gaps, key=abs)


class Simulator:
    def __init__(self, progress: Progress, clock: FakeClock, seed: int, noise: float = 0.1):
        self.p, self.clock = progress, clock
        self.rng = random.Random(seed)
        self.noise = noise
        self.slow = 1.0  # multiplies every step from now on (a machine that got busier)
        self.run: Run | None = None

    def _tick(self, seconds: float) -> None:
        seconds *= self.slow * (1 + self.rng.uniform(-self.noise, self.noise))
        end = self.clock.now + seconds
        while self.clock.now < end:
            self.clock.now = min(self.clock.now + 0.25, end)  # a reader at 4 Hz
            assert self.run is not None
            s = json.loads(self.p.snapshot().model_dump_json())
            assert contradictions(s) == [], (contradictions(s), s)
            self.run.samples.append((self.clock.now, s))

    def batch(self, batch_id: int, photos: list[tuple[str, int]], on_chunk=None) -> Run:
        """Run one batch of (kind, faces) photos through the progress channel."""
        n = len(photos)
        ids = [batch_id * 10_000 + i for i in range(n)]
        rows = [
            (i, f"p{k:04d}.jpg", KINDS[kind])
            for k, (i, (kind, _)) in enumerate(zip(ids, photos, strict=True))
        ]
        counts = {
            "embedding": PhaseCount(total=n),
            "faces": PhaseCount(total=n),
            "clustering": PhaseCount(total=5),
        }
        p = self.p
        p.set_state(DaemonStatus.TRAINING, "Processing")
        p.begin_batch(
            batch_id, f"batch {batch_id}", counts, BatchWork({"embedding": rows, "faces": rows})
        )
        self.run = Run(self.clock.now)
        # Decoding runs RUN_AHEAD chunks ahead of the models, as the pipeline's workers do:
        # each photo's decode lands in whichever report is under way, and slows it.
        to_decode = list(zip(ids, (kind for kind, _ in photos), strict=True))

        def decode(k: int) -> float:
            cpu = 0.0
            for _ in range(min(k, len(to_decode))):
                image_id, kind = to_decode.pop(0)
                took = decode_cpu(kind) * (1 + self.rng.uniform(-0.2, 0.2))
                p.decoded(image_id, took)
                cpu += took
            return 0.5 * cpu  # two workers on two shared cores

        startup = decode(2 * CHUNK)  # the first two chunks, before any model runs
        found = 0
        for c0 in range(0, n, CHUNK):
            part = photos[c0 : c0 + CHUNK]
            p.phase_started("embedding")
            self._tick(startup + 0.04 * len(part))
            startup = 0.0
            p.advance("embedding", len(part))
            p.phase_started("faces")
            for _, faces in part:
                self._tick(0.03 + 0.02 * faces + decode(1))
                p.advance("faces", 1, faces=faces)
                found += faces
            if on_chunk:
                on_chunk(c0 + len(part))
        p.phase_finished("embedding", PhaseState.COMPLETED)
        p.phase_finished("faces", PhaseState.COMPLETED)
        p.phase_started("clustering")
        for _ in range(5):
            self._tick(0.1 + 0.002 * found / 5)
            p.advance("clustering", 1)
        p.phase_finished("clustering", PhaseState.COMPLETED)
        self.clock.now += 1.0  # finishing the batch: the ledger, the summary, the totals
        self.run.end = self.clock.now
        p.end_batch(learn=True)
        return self.run

    def photos(self, kinds: tuple[str, ...], n: int, face_share: float = 0.33) -> list:
        return [
            (
                self.rng.choice(kinds),
                self.rng.choice((1, 2, 3)) if self.rng.random() < face_share else 0,
            )
            for _ in range(n)
        ]


def _warm_memory(seed: int) -> dict[str, str]:
    """What a library remembers after one batch of mixed 12 MP and 6 MP photos."""
    clock = FakeClock()
    sim = Simulator(Progress(data_dir="/", clock=clock), clock, seed + 1000)
    sim.batch(1, sim.photos(("12mp", "6mp"), 300))
    return sim.p.memory()


@pytest.mark.parametrize("seed", range(4))
def test_fresh_library_mixed_sizes_eta_within_10_percent(seed: int) -> None:
    clock = FakeClock()
    sim = Simulator(Progress(data_dir="/", clock=clock), clock, seed)
    run = sim.batch(1, sim.photos(("12mp", "6mp"), 600))
    for q in (25, 50, 75):
        assert abs(run.eta_error(q)) <= 0.10, (q, run.eta_error(q))
    assert abs(run.worst_gap()) <= 5


@pytest.mark.parametrize("seed", range(4))
def test_sizes_changing_mid_batch_are_foreseen_from_the_headers(seed: int) -> None:
    # Small photos first, then 12 MP ones: a cost per image would be off by 3x at 25%.
    clock = FakeClock()
    sim = Simulator(Progress(data_dir="/", clock=clock, memory=_warm_memory(seed)), clock, seed)
    run = sim.batch(2, sim.photos(("1mp",), 300) + sim.photos(("12mp",), 300))
    for q in (25, 50, 75):
        assert abs(run.eta_error(q)) <= 0.10, (q, run.eta_error(q))
    assert abs(run.worst_gap()) <= 5


@pytest.mark.parametrize("seed", range(3))
def test_a_phase_that_slows_down_is_followed_by_the_batchs_own_rate(seed: int) -> None:
    clock = FakeClock()
    sim = Simulator(Progress(data_dir="/", clock=clock, memory=_warm_memory(seed)), clock, seed)

    def slow_down(done: int) -> None:
        if done == 192:  # a third of the way: everything becomes twice as slow
            sim.slow = 2.0

    run = sim.batch(2, sim.photos(("12mp", "6mp"), 600), on_chunk=slow_down)
    # The remembered model says "fast"; within a few chunks the batch's own rate wins.
    assert abs(run.eta_error(75)) <= 0.10, run.eta_error(75)
    pcts = [s["overall_progress"]["percentage"] for _, s in run.samples]
    assert pcts == sorted(pcts), "the percentage went backwards within the batch"


def test_a_stall_is_said_with_batch_phase_and_file_and_clears_itself() -> None:
    clock = FakeClock()
    p = Progress(data_dir="/", clock=clock, memory=_warm_memory(0))
    sim = Simulator(p, clock, 0, noise=0.0)
    photos = sim.photos(("6mp",), 64)
    rows = [(i, f"p{i:04d}.jpg", KINDS[k]) for i, (k, _) in enumerate(photos)]
    counts = {
        "embedding": PhaseCount(total=64),
        "faces": PhaseCount(total=64),
        "clustering": PhaseCount(total=5),
    }
    p.set_state(DaemonStatus.TRAINING, "Processing")
    p.begin_batch(7, "holiday", counts, BatchWork({"embedding": rows, "faces": rows}))
    p.phase_started("embedding")
    clock.now += 1.0
    p.advance("embedding", 32)
    p.phase_started("faces")
    for _ in range(3):
        clock.now += 0.05
        p.advance("faces", 1, faces=0)
    before = p.snapshot()
    assert not before.stalled
    expected = p.costs.seconds("faces", p.work_of("faces", 1))
    limit = max(60.0, 10 * expected)
    clock.now += limit - 0.5
    almost = p.snapshot()
    assert not almost.stalled
    # Stuck: time in the step counts only up to what it should take.
    assert almost.overall_progress.percentage <= before.overall_progress.percentage + 1
    clock.now += 1.0
    stalled = p.snapshot()
    assert stalled.stalled and stalled.stalled_since is not None
    assert "batch 7 'holiday'" in stalled.stall_reason
    # Faces has reported 3 images: the fourth is the one being worked on.
    assert "phase faces" in stalled.stall_reason and "file p0003.jpg" in stalled.stall_reason
    assert contradictions(json.loads(stalled.model_dump_json())) == []
    p.advance("faces", 1, faces=1)
    after = p.snapshot()
    assert not after.stalled and after.stall_reason is None


def test_stall_seconds_from_the_config_and_paused_time_is_no_stall() -> None:
    clock = FakeClock()
    p = Progress(data_dir="/", clock=clock, stall_seconds=5.0)
    counts = {
        "embedding": PhaseCount(total=10),
        "faces": PhaseCount(total=10),
        "clustering": PhaseCount(total=5),
    }
    p.set_state(DaemonStatus.TRAINING, "Processing")
    p.begin_batch(1, "b", counts)
    p.phase_started("embedding")
    clock.now += 4.0
    assert not p.snapshot().stalled
    p.set_state(DaemonStatus.PAUSED, "Paused between chunks")
    clock.now += 600.0
    assert not p.snapshot().stalled  # paused: nobody's work, no stall
    p.set_state(DaemonStatus.TRAINING, "Processing")
    clock.now += 0.5
    assert not p.snapshot().stalled  # 4.5 s of work time, not 604.5
    clock.now += 1.0
    assert p.snapshot().stalled


def test_phase_etas_are_when_each_phase_will_be_done() -> None:
    clock = FakeClock()
    p = Progress(data_dir="/", clock=clock, memory=_warm_memory(0))
    sim = Simulator(p, clock, 0, noise=0.0)
    seen = []

    def look(done: int) -> None:
        s = p.snapshot()
        seen.append(s)
        e, f, c = (getattr(s.phases, n).eta_seconds for n in ("embedding", "faces", "clustering"))
        assert 0 <= e <= f <= c <= s.overall_progress.eta_seconds + 1e-6, (e, f, c)

    sim.batch(3, sim.photos(("6mp",), 160), on_chunk=look)
    last = seen[-1]  # every image phase done, clustering to come
    assert last.phases.embedding.eta_seconds == 0 and last.phases.faces.eta_seconds == 0
    assert last.phases.clustering.eta_seconds > 0


# -- the regression itself -----------------------------------------------------------
def test_regression_finds_the_costs_when_the_photos_vary() -> None:
    rng = np.random.default_rng(0)
    truth = np.array([0.004, 0.004, 0.015, 0.008])
    r = Regression((0.01, 0.01, 0.01, 0.01), (1.0, 2.0, 2.0, 2.0))
    for _ in range(400):
        x = np.array([1.0, *rng.uniform(0.2, 5.0, 3)])  # every feature varies on its own
        r.observe(x, float(truth @ x))
    assert np.allclose(r.coef(), truth, atol=2e-4)


def test_regression_predicts_each_kind_of_photo_it_has_seen() -> None:
    # Real photos come in a few sizes: the coefficients are not all identifiable, the
    # predictions for those sizes are.
    rng = np.random.default_rng(1)
    truth = np.array([0.004, 0.004, 0.015, 0.008])
    r = Regression((0.01, 0.01, 0.01, 0.01), (1.0, 2.0, 2.0, 2.0))
    for _ in range(300):
        x = np.array(KINDS[rng.choice(list(KINDS))]) * np.array([1, 1, 1, rng.uniform(0.8, 1.2)])
        r.observe(x, float(truth @ x))
    for features in KINDS.values():
        x = np.array(features)
        assert r.predict(x) == pytest.approx(float(truth @ x), rel=0.03)


def test_regression_keeps_the_prior_in_a_direction_the_data_never_varied() -> None:
    r = Regression((0.05, 0.5, 0.0), (1.0, 0.05, 1.0))
    for _ in range(200):
        r.observe(np.array([1.0, 0.08, 0.0]), 0.1)  # one size, no faces ever
    assert r.coef()[2] == 0.0  # faces: still the prior
    assert r.predict(np.array([1.0, 0.08, 0.0])) == pytest.approx(0.1, rel=0.02)


def test_regression_never_goes_negative_and_forgets_in_proportion() -> None:
    r = Regression((0.05, 0.5, 0.01), (1.0, 0.05, 1.0))
    for k in range(5000):
        r.observe(np.array([1.0, 0.0, float(k % 3)]), 0.2 - 0.01 * (k % 3))
    assert (r.coef() >= 0).all()
    assert r.count <= 3000
    again = Regression((0.05, 0.5, 0.01), (1.0, 0.05, 1.0))
    again.load(json.loads(json.dumps(r.dump())))
    assert np.allclose(again.coef(), r.coef())


def test_memory_survives_a_restart_and_a_damaged_one_is_ignored() -> None:
    memory = _warm_memory(0)
    warm = Progress(data_dir="/", memory=memory)
    fresh = Progress(data_dir="/")
    work = PhaseWork(32)
    photos = np.asarray(KINDS["12mp"]) * 32
    assert warm.costs.seconds("embedding", work) != fresh.costs.seconds("embedding", work)
    assert warm.costs.decode_seconds(photos) != fresh.costs.decode_seconds(photos)
    broken = Progress(data_dir="/", memory={"wall": "{not json", "decode": "[]"})
    assert broken.costs.seconds("embedding", work) == fresh.costs.seconds("embedding", work)
    assert broken.costs.decode_seconds(photos) == fresh.costs.decode_seconds(photos)
