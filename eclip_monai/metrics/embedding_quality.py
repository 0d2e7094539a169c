"""How the two modalities fill the embedding sphere: modality gap, alignment and uniformity.

Alignment and uniformity follow Wang & Isola (ICML 2020): alignment is the mean squared distance of positive
pairs ‖x − y‖², uniformity the log of the mean Gaussian potential exp(−2‖x − y‖²) over distinct pairs (lower
is more uniform). The modality gap (Liang et al., NeurIPS 2022) is the distance between the centroids of the
image and the text embeddings. All are computed on L2-normalised embeddings, in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eclip_monai.metrics.gathered import GatheredMetric

QUALITY_KEYS = ("modality_gap", "alignment", "uniformity_image", "uniformity_text", "uniformity_joint")


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.detach().double(), dim=-1)


def modality_gap(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """‖mean(image) − mean(text)‖ of the normalised embeddings."""
    return (_unit(image_features).mean(0) - _unit(text_features).mean(0)).norm().item()


def alignment(image_features: torch.Tensor, text_features: torch.Tensor) -> float:
    """Mean ‖x_i − y_i‖² over the paired rows (0 when every pair coincides, 4 when antipodal)."""
    return (_unit(image_features) - _unit(text_features)).pow(2).sum(-1).mean().item()


def uniformity(features: torch.Tensor, t: float = 2.0, block: int = 1 << 22) -> float:
    """log mean_{i<j} exp(−t‖x_i − x_j‖²), computed ``block`` distances at a time (32 MiB by default) with a
    log-sum-exp, so large sets neither hold the full distance matrix nor underflow; NaN below two points."""
    x = _unit(features)
    n = x.shape[0]
    if n < 2:
        return math.nan
    rows = max(1, block // n)
    partial = []
    for r0 in range(0, n - 1, rows):
        block = x[r0 : r0 + rows]
        sq = (2 - 2 * block @ x.T).clamp_min(0)  # ‖a − b‖² of unit vectors
        i = torch.arange(r0, r0 + block.shape[0])[:, None]
        upper = torch.arange(n)[None] > i
        partial.append(torch.logsumexp((-t * sq).masked_fill(~upper, -math.inf).flatten(), 0))
    return (torch.logsumexp(torch.stack(partial), 0) - math.log(n * (n - 1) / 2)).item()


def embedding_quality(image_features: torch.Tensor, text_features: torch.Tensor) -> dict[str, float]:
    """``modality_gap``, ``alignment`` and ``uniformity_{image,text,joint}`` of paired embeddings."""
    return {
        "modality_gap": modality_gap(image_features, text_features),
        "alignment": alignment(image_features, text_features),
        "uniformity_image": uniformity(image_features),
        "uniformity_text": uniformity(text_features),
        "uniformity_joint": uniformity(torch.cat([image_features, text_features])),
    }


def cosine_similarity_matrix(features: torch.Tensor) -> torch.Tensor:
    """(C, C) cosine similarities between rows, e.g. class text embeddings: how distinct the classes are."""
    unit = _unit(features)
    return unit @ unit.T


class EmbeddingQuality(GatheredMetric):
    """Ignite metric: one of :func:`embedding_quality`'s keys (``None`` for all as a dict).

    Expects the engine output (after ``output_transform``) to be ``(image_features, text_features)``.
    """

    def __init__(self, metric: str | None = "modality_gap", output_transform=lambda x: x, device="cpu"):
        if metric is not None and metric not in QUALITY_KEYS:
            raise ValueError(f"metric must be one of {QUALITY_KEYS} or None, got {metric!r}")
        self.metric = metric
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float | dict[str, float]:
        result = embedding_quality(*self.gathered())
        return result if self.metric is None else result[self.metric]
