"""Ignite handlers for eCLIP training: the expert curriculum, atomic checkpoints and the training guard."""

from eclip_monai.handlers.checkpoint import AtomicCheckpointSaver, VerifiedCheckpointLoader, checkpoint_objects
from eclip_monai.handlers.curriculum import (
    PHASES,
    ExpertCurriculumHandler,
    curriculum_phase,
    expert_probability,
)
from eclip_monai.handlers.guards import TrainingGuard

__all__ = [
    "PHASES",
    "AtomicCheckpointSaver",
    "ExpertCurriculumHandler",
    "TrainingGuard",
    "VerifiedCheckpointLoader",
    "checkpoint_objects",
    "curriculum_phase",
    "expert_probability",
]
