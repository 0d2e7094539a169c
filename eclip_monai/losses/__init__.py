"""Training objectives: the (distributed) contrastive loss and the heatmap processor's priming loss."""

from eclip_monai.losses.contrastive import ContrastiveLoss, batch_retrieval_accuracy
from eclip_monai.losses.priming import PrimingLoss

__all__ = ["ContrastiveLoss", "PrimingLoss", "batch_retrieval_accuracy"]
