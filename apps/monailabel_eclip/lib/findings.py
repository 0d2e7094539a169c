"""Zero-shot finding classification of one chest X-ray, as a MONAI Label classification task."""

from __future__ import annotations

from monai.transforms import EnsureTyped
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from eclip_monai.evaluation.embed import eval_image_transforms
from eclip_monai.networks.zero_shot import ZeroShotClassifier


class ZeroShotFindings(BasicInferTask):
    """P(finding present) for each configured finding, from ``ZeroShotClassifier``.

    ``BasicInferTask`` does the rest: it deep-copies ``classifier`` per device, loads the checkpoint into it
    strictly (the classifier recomputes its prompt embeddings on load), reloads when the file changes, and
    its ``ClassificationWriter`` answers ``{"prediction": [{"idx", "label", "score"}, ...]}``.

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
            model_state_dict="model",
            load_strict=True,
        )
        self.image_size = image_size

    def pre_transforms(self, data=None):
        return list(eval_image_transforms(self.image_size).transforms)

    def post_transforms(self, data=None):
        return [EnsureTyped(keys=self.output_label_key, track_meta=True)]  # the writer logs ``pred.array``
