"""Ignite handlers for eCLIP training: the expert curriculum and atomic checkpoints."""

from eclip_monai.handlers.checkpoint import AtomicCheckpointSaver, checkpoint_objects
from eclip_monai.handlers.curriculum import (
    PHASES,
    ExpertCurriculumHandler,
    curriculum_phase,
    expert_probability,
)

__all__ = [
    "PHASES",
    "AtomicCheckpointSaver",
    "ExpertCurriculumHandler",
    "checkpoint_objects",
    "curriculum_phase",
    "expert_probability",
]
