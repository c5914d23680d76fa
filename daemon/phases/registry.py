"""Which class runs each phase, and the phases a config asks for, in the vocabulary's order."""

from __future__ import annotations

from daemon.config import Config
from daemon.phases.base import BatchPhase, ImagePhase
from daemon.phases.clustering import ClusteringPhase
from daemon.phases.embedding import EmbeddingPhase
from daemon.phases.faces import FacesPhase
from daemon.vocab import PHASES, PhaseName, is_batch_phase

PHASE_CLASSES: dict[PhaseName, type] = {
    PhaseName.EMBEDDING: EmbeddingPhase,
    PhaseName.FACES: FacesPhase,
    PhaseName.CLUSTERING: ClusteringPhase,
}


def build_phases(config: Config) -> tuple[list[ImagePhase], list[BatchPhase]]:
    """Fresh phase objects for the enabled phases: (image phases, batch phases), in order."""
    enabled = [p for p in PHASES if p in config.phases]
    image = [PHASE_CLASSES[p]() for p in enabled if not is_batch_phase(p)]
    batch = [PHASE_CLASSES[p]() for p in enabled if is_batch_phase(p)]
    return image, batch


def declared_steps(config: Config) -> dict[str, int]:
    """Sub-steps each enabled batch phase reports, known before it runs (for the run's total)."""
    return {
        str(p): int(PHASE_CLASSES[p].STEPS)
        for p in PHASES
        if p in config.phases and is_batch_phase(p)
    }
