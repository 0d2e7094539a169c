"""The eCLIP training engine and the reproducible data streams it reads."""

from eclip_monai.seeding import derive_seed
from eclip_monai.engines.streams import ExpertStream, ResumableLoader, SeededPasses
from eclip_monai.engines.trainer import ECLIPTrainer

__all__ = ["ECLIPTrainer", "ExpertStream", "ResumableLoader", "SeededPasses", "derive_seed"]
