"""What the photos still to process are made of, for the ETA: read from their headers once.

The current batch's images go to the progress channel in the order the
pipeline takes them (`batch_work`); the run's waiting batches are summed per
phase (`phase_work`). Headers are read once per image and kept while the
image may still be needed; a claim of a few hundred photos costs a fraction
of a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.config import DecodeConfig
from daemon.imaging.cost import decode_shape
from daemon.ledger.workload import PendingFile
from daemon.status.estimate import DECODE_FEATURES, BatchWork, PhaseWork
from daemon.vocab import IMAGE_PHASES, PhaseName

MAX_CACHED = 200_000  # images; beyond this the cache starts over (a bound, not a tuning)


class Workload:
    def __init__(self, decode: DecodeConfig) -> None:
        self.decode = decode
        self._features: dict[int, tuple[float, ...]] = {}

    def features(self, folder: Path, item: PendingFile) -> tuple[float, ...]:
        found = self._features.get(item.image_id)
        if found is None:
            if len(self._features) >= MAX_CACHED:
                self._features.clear()
            found = decode_shape(folder / item.rel_path, self.decode).features(item.size)
            self._features[item.image_id] = found
        return found

    def forget(self, items: list[PendingFile]) -> None:
        for item in items:
            self._features.pop(item.image_id, None)

    def batch_work(self, folder: Path, pending: list[PendingFile]) -> BatchWork:
        rows: dict[str, list[tuple[int, str, tuple[float, ...]]]] = {}
        for phase in IMAGE_PHASES:
            rows[phase] = [
                (i.image_id, i.rel_path, self.features(folder, i))
                for i in pending
                if phase in i.phases
            ]
        return BatchWork(rows)

    def phase_work(
        self, folder: Path, pending: list[PendingFile]
    ) -> tuple[dict[str, PhaseWork], np.ndarray]:
        """Per image phase the pending images' steps; and the decode features of every
        photo to decode (once, for all image phases), summed."""
        out = {}
        for phase in IMAGE_PHASES:
            n = sum(1 for i in pending if phase in i.phases)
            if n:
                out[phase] = PhaseWork(float(n), None if phase == PhaseName.FACES else 0.0)
        decode = np.zeros(len(DECODE_FEATURES))
        for i in pending:
            decode += np.asarray(self.features(folder, i))
        return out, decode
