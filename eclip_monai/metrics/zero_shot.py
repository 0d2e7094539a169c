"""Zero-shot classification: an image gets the class whose prompt-ensemble text embedding is closest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from eclip_monai.metrics.classification import classification_metrics
from eclip_monai.networks.zero_shot import class_embeddings


def zero_shot_scores(
    image_features: torch.Tensor,
    class_features: torch.Tensor,
    logit_scale: float = 100.0,
    multilabel: bool = False,
) -> torch.Tensor:
    """(N, C) scores: softmax over classes of ``logit_scale`` × cosine similarity, or for ``multilabel`` the
    cosine similarities themselves (each class is judged on its own, so no softmax couples them)."""
    sims = F.normalize(image_features.float(), dim=-1) @ class_features.float().T
    return sims if multilabel else (logit_scale * sims).softmax(-1)


def zero_shot_classification(
    image_features: torch.Tensor,
    class_features: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float = 100.0,
) -> dict[str, float]:
    """Accuracy, macro-F1 and AUROC for class indices (N,); AUROC alone for multi-hot labels (N, C), whose
    similarities carry no decision threshold."""
    labels = torch.as_tensor(labels)
    scores = zero_shot_scores(image_features, class_features, logit_scale, multilabel=labels.ndim == 2)
    return classification_metrics(labels, scores)
