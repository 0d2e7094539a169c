"""Zero-shot finding classification of one chest X-ray, as a MONAI Label classification task."""

from __future__ import annotations

import copy
import os

import torch
from monai.transforms import EnsureTyped
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from eclip_monai.evaluation.embed import eval_image_transforms
from eclip_monai.networks.checkpoint import read_state_dict
from eclip_monai.networks.zero_shot import ZeroShotClassifier


class ZeroShotFindings(BasicInferTask):
    """P(finding present) for each configured finding, from ``ZeroShotClassifier``.

    The weights are read by the project's one checkpoint reader (``networks.checkpoint.read_state_dict``:
    ``weights_only``, the same accepted keys as training and evaluation — ``model``, ``network`` or a bare state
    dict), loaded strictly into a per-device copy of ``classifier`` (which drops the heatmap processor's weights
    and re-embeds its prompts with the checkpoint's text tower) and reloaded when the file changes.
    ``BasicInferTask`` does the rest; its ``ClassificationWriter`` answers
    ``{"prediction": [{"idx", "label", "score"}, ...]}``.

    Args:
        classifier: the network to load the weights into.
        checkpoint: the eCLIP checkpoint file.
        image_size: the size the network was trained at; preprocessing is the evaluation chain
            (``LoadCXRImaged``: DICOM VOI/MONOCHROME1, PNG/JPEG, NIfTI; shortest side, centre crop,
            normalise).
    """

    def __init__(self, classifier: ZeroShotClassifier, checkpoint: str, image_size: int):
        super().__init__(
            path=checkpoint,
            network=classifier,
            type=InferType.CLASSIFICATION,
            labels=list(classifier.findings),
            dimension=2,
            description="eCLIP zero-shot chest X-ray findings: one probability per finding",
            load_strict=True,
        )
        self.image_size = image_size

    def _get_network(self, device, data):
        path = self.get_path()
        mtime = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached is None or cached[1] != mtime:
            network = copy.deepcopy(self.network).to(torch.device(device))
            network.load_state_dict(read_state_dict(path), strict=True)
            self._networks[device] = (network.eval(), mtime)
        return self._networks[device][0]

    def pre_transforms(self, data=None):
        return list(eval_image_transforms(self.image_size).transforms)

    def post_transforms(self, data=None):
        return [EnsureTyped(keys=self.output_label_key, track_meta=True)]  # the writer logs ``pred.array``
