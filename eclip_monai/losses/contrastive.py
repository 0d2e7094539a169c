"""Symmetric InfoNCE over cosine logits, exact under torch.distributed (features gathered with gradient)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from open_clip.loss import ClipLoss


class ContrastiveLoss(ClipLoss):
    """open_clip's ``ClipLoss`` with ``gather_with_grad=True`` and the process group read at call time.

    Reading rank and world size on each call (not at construction) lets a bundle config build the loss
    before ``torch.distributed`` is initialised. Features are all-gathered *with* gradient, so every rank's
    embeddings feel all negatives; with DistributedDataParallel's gradient averaging the update equals the
    single-process update on the whole global batch.

    Args:
        local_loss: each rank scores its own rows against all columns (B_local × B_global logits instead
            of B_global²), which saves memory; the rank-averaged loss is the same.
    """

    def __init__(self, local_loss: bool = False):
        super().__init__(local_loss=local_loss, gather_with_grad=True)

    def forward(
        self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
    ) -> torch.Tensor:
        distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if distributed else 0
        self.world_size = dist.get_world_size() if distributed else 1
        return super().forward(image_features, text_features, logit_scale)


@torch.no_grad()
def batch_retrieval_accuracy(
    image_features: torch.Tensor, text_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 image→text and text→image accuracy within the local batch (pair i matches i), for logging."""
    similarity = image_features @ text_features.T
    target = torch.arange(similarity.shape[0], device=similarity.device)
    i2t = (similarity.argmax(dim=1) == target).float().mean()
    t2i = (similarity.argmax(dim=0) == target).float().mean()
    return i2t, t2i
