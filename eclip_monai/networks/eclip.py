"""eCLIP: a CLIP model plus a heatmap processor that turns gaze heatmaps into extra (expert) images."""

from __future__ import annotations

import math
import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eclip_monai.errors import CXRDataError
from eclip_monai.networks.heatmap_processor import HeatmapProcessor
from eclip_monai.networks.towers import create_clip_model

# Embedding tables (token, position, class, relative-position) and the temperature are not decayed:
# shrinking them towards zero only erases learned lookups.
_NO_DECAY_NAMES = re.compile(
    r"(^|\.)(token_embedding|positional_embedding|class_embedding|pos_embed|absolute_pos_embed|cls_token"
    r"|word_embeddings|position_embeddings|token_type_embeddings|relative_position_bias_table"
    r"|logit_scale|logit_bias)(\.|$)"
)


class ECLIP(nn.Module):
    """CLIP whose image batch can be extended with expert images built from radiologist heatmaps.

    Expert pairs (mixup of I and HP(I, H), full report) are concatenated after the main batch, so one InfoNCE
    runs over both; with ``heatmap_processor=None`` this module *is* the CLIP baseline.

    ``forward`` is the single entry a trainer calls, so DistributedDataParallel sees every parameter used. The
    processor is idle on steps without experts or priming, so wrap with ``find_unused_parameters=True``.

    Args:
        clip_model: an open_clip ``CLIP``/``CustomTextCLIP`` (see ``create_clip_model``); its ``logit_scale``
            parameter (init ln(1/0.07)) is the learnable temperature.
        heatmap_processor: HP(I, H); None for the CLIP baseline.
        mixup_alpha: λ ~ Beta(α, α) per expert sample; α < 1 puts most mass near 0 and 1.
        mixup: False uses the pure expert image (λ = 0), as in the naive-fuse and no-mixup ablations.
        random_heatmaps: ablation that replaces every heatmap by random smooth Gaussian blobs (drawn per
            sample, so it works for any batch size) to test whether *where* the radiologist looked matters.
        max_logit_scale: upper clamp of exp(logit_scale), keeping the softmax from collapsing.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        heatmap_processor: HeatmapProcessor | None = None,
        mixup_alpha: float = 0.2,
        mixup: bool = True,
        random_heatmaps: bool = False,
        max_logit_scale: float = 100.0,
    ):
        super().__init__()
        self.clip = clip_model
        self.heatmap_processor = heatmap_processor
        self.mixup_alpha = mixup_alpha
        self.mixup = mixup
        self.random_heatmaps = random_heatmaps
        self.max_log_scale = math.log(max_logit_scale)

    @property
    def has_experts(self) -> bool:
        return self.heatmap_processor is not None

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(image), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale.clamp(max=self.max_log_scale).exp().reshape(())

    def expert_images(self, image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
        """I_mix = λ·I + (1 − λ)·HP(I, H), one λ per sample."""
        processor = self._processor()
        if self.random_heatmaps:
            heatmap = random_blob_heatmaps(heatmap.shape[0], image.shape[-2:], device=image.device)
        expert = processor(image, heatmap)
        if not self.mixup:
            return expert
        alpha = torch.tensor(self.mixup_alpha, device=image.device, dtype=torch.float32)
        lam = torch.distributions.Beta(alpha, alpha).sample((image.shape[0],)).to(image.dtype)
        lam = lam.view(-1, *([1] * (image.ndim - 1)))
        return lam * image + (1 - lam) * expert

    def prime(self, image: torch.Tensor) -> torch.Tensor:
        """HP(I, 1): the processor without a heatmap, which the priming loss pulls towards I."""
        return self._processor()(image, torch.ones_like(image[:, :1]))

    def forward(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        expert_image: torch.Tensor | None = None,
        expert_heatmap: torch.Tensor | None = None,
        prime: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Embed B images (+ B_e expert images appended) and B (+ B_e) token rows; optionally prime.

        Returns ``image_features``, ``text_features`` (L2-normalised), ``logit_scale`` and, when ``prime``,
        ``primed`` = HP(image, 1).
        """
        images = image
        if (expert_image is None) != (expert_heatmap is None):
            raise CXRDataError(
                "expected expert_image and expert_heatmap together, found only one", field="expert_heatmap"
            )
        if expert_image is not None:
            images = torch.cat([image, self.expert_images(expert_image, expert_heatmap)])
        if text.shape[0] != images.shape[0]:
            raise CXRDataError(
                f"expected one token row per image ({image.shape[0]} main + "
                f"{images.shape[0] - image.shape[0]} expert), found {text.shape[0]}",
                field="text",
            )
        out = {
            "image_features": self.encode_image(images),
            "text_features": self.encode_text(text),
            "logit_scale": self.logit_scale(),
        }
        if prime:
            out["primed"] = self.prime(image)
        return out

    def param_groups(self, lr: float, weight_decay: float, hp_lr_mult: float = 2.0) -> list[dict[str, Any]]:
        """AdamW groups: no decay on biases, norms, embeddings and the temperature; processor at lr × mult."""
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            if param.requires_grad:
                is_hp = name.startswith("heatmap_processor.")
                decay = param.ndim >= 2 and not _NO_DECAY_NAMES.search(name)
                groups.setdefault((is_hp, decay), []).append(param)
        return [
            {
                "name": f"{'heatmap_processor' if is_hp else 'clip'}_{'decay' if decay else 'no_decay'}",
                "params": params,
                "lr": lr * hp_lr_mult if is_hp else lr,
                "weight_decay": weight_decay if decay else 0.0,
            }
            for (is_hp, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))
        ]

    def _processor(self) -> HeatmapProcessor:
        if self.heatmap_processor is None:
            raise RuntimeError("this ECLIP is the CLIP baseline: it has no heatmap processor")
        return self.heatmap_processor


def random_blob_heatmaps(
    batch: int, size: tuple[int, int] | torch.Size, blobs: int = 5, device: torch.device | str | None = None
) -> torch.Tensor:
    """Random smooth maps (B, 1, H, W) in [0, 1]: a sum of Gaussian blobs with random centres, widths (5–15 %
    of the shorter side) and weights, gaze-like in texture but unrelated to the image."""
    height, width = size
    centres = torch.rand(batch, blobs, 2, device=device) * torch.tensor([height, width], device=device)
    sigma = torch.empty(batch, blobs, 1, 1, device=device).uniform_(0.05, 0.15) * min(height, width)
    weight = torch.rand(batch, blobs, 1, 1, device=device)
    rows = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, -1, 1)
    cols = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, -1)
    dist2 = (rows - centres[..., 0, None, None]) ** 2 + (cols - centres[..., 1, None, None]) ** 2
    maps = (weight * torch.exp(-dist2 / (2 * sigma**2))).sum(dim=1, keepdim=True)
    return maps / maps.amax(dim=(2, 3), keepdim=True)


def build_eclip(
    model_name: str | None = None,
    model_cfg: dict[str, Any] | str | None = None,
    pretrained: str | None = None,
    experts: bool = True,
    hp_dim: int = 256,
    hp_heads: int = 8,
    patch_size: int = 16,
    mixup_alpha: float = 0.2,
    mixup: bool = True,
    random_heatmaps: bool = False,
    max_logit_scale: float = 100.0,
    lock_text: bool = False,
    **tower_kwargs: Any,
) -> ECLIP:
    """One call for bundle configs: towers from ``create_clip_model(**tower_kwargs)`` plus, when ``experts``,
    a heatmap processor over the same number of input channels.

    ``lock_text`` freezes the text tower's encoder (its projection stays trainable), LiT-style: with a
    pretrained text tower the image tower then learns towards fixed, already meaningful report embeddings.
    """
    clip_model = create_clip_model(model_name, model_cfg, pretrained, **tower_kwargs)
    if lock_text:
        clip_model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    processor = None
    if experts:
        processor = HeatmapProcessor(tower_kwargs.get("in_chans", 1), hp_dim, patch_size, hp_heads)
        processor.to(next(clip_model.parameters()).device)
    return ECLIP(clip_model, processor, mixup_alpha, mixup, random_heatmaps, max_logit_scale)
