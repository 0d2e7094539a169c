"""Zero-shot inference on chest X-ray files → ``ZeroShotClassifier`` → per-image findings and embeddings.

The bundle's ``configs/inference.json`` composes these with MONAI's ``Dataset``, ``DataLoader`` and Ignite
evaluator; nothing here is specific to one dataset.
"""

from eclip_monai.inference.engine import InferenceEvaluator, ZeroShotInferer
from eclip_monai.inference.inputs import IMAGE_SUFFIXES, image_datalist, image_stem, inference_transforms
from eclip_monai.inference.writers import SaveFindingsd

__all__ = [
    "IMAGE_SUFFIXES",
    "InferenceEvaluator",
    "SaveFindingsd",
    "ZeroShotInferer",
    "image_datalist",
    "image_stem",
    "inference_transforms",
]
