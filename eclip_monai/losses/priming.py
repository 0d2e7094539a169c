"""Priming loss: teaches the heatmap processor to be the identity when it is given no heatmap."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PrimingLoss(nn.Module):
    """MSE(HP(I, 1), I), used during the cold start so expert images begin close to the real image instead of
    being noise that would poison the contrastive batch when the curriculum starts injecting them."""

    def forward(self, primed: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(primed, image)
