"""eCLIP: a CLIP model plus a heatmap processor that turns gaze heatmaps into extra (expert) images."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from eclip_monai.errors import require_switches
from eclip_monai.networks.heatmap_processor import HeatmapProcessor
from eclip_monai.networks.text_cache import FrozenTextCache
from eclip_monai.networks.towers import create_clip_model

# Embedding tables (token, position, class, relative-position) and the temperature are not decayed:
# shrinking them towards zero only erases learned lookups.
_NO_DECAY_NAMES = re.compile(
    r"(^|\.)(token_embedding|positional_embedding|class_embedding|pos_embed|absolute_pos_embed|cls_token"
    r"|word_embeddings|position_embeddings|token_type_embeddings|relative_position_bias_table"
    r"|logit_scale|logit_bias)(\.|$)"
)

# The paper's processor patchifies 224 px images with 16 px patches: a 14 x 14 token grid.
PAPER_TOKEN_GRID = 14


@contextmanager
def frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Within the block, batch-norm layers of ``module`` leave their running statistics alone.

    Every ``_BatchNorm`` (BatchNorm1d/2d/3d, SyncBatchNorm, timm's BatchNormAct2d) that tracks running
    statistics gets ``track_running_stats = False`` until the block ends, also on an exception. PyTorch then
    normalises a train-mode batch with that batch's own statistics and hands the layer no running buffers, so
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` are not updated; in eval mode the layer
    still normalises with its running statistics. Layers without running statistics are untouched.
    """
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    for norm in norms:
        norm.track_running_stats = False
    try:
        yield
    finally:
        for norm in norms:
            norm.track_running_stats = True


class ECLIP(nn.Module):
    """CLIP whose image batch can be extended with expert images built from radiologist heatmaps.

    Expert pairs (mixup of I and HP(I, H), full report) are concatenated after the main batch, so one InfoNCE
    runs over both; with ``heatmap_processor=None`` this module *is* the CLIP baseline.

    Main and expert images go through the image tower in two separate passes, and the expert pass runs under
    ``frozen_norm_statistics``. With a batch-norm tower (``eclip-tiny-cnn``'s ResNet) a shared pass would
    normalise the main images with statistics partly computed from expert images, so the main features would
    depend on whether and which experts were drawn, and the running statistics used at evaluation would drift
    towards synthetic images never seen at test time. Now the main features are exactly those of a step
    without experts, and only real images shape the running statistics; the expert pass normalises with its
    own batch statistics in train mode.

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
        require_switches(mixup=mixup, random_heatmaps=random_heatmaps)  # the string 'false' would be truthy
        self.clip = clip_model
        self.heatmap_processor = heatmap_processor
        self.mixup_alpha = mixup_alpha
        self.mixup = mixup
        self.random_heatmaps = random_heatmaps
        self.max_log_scale = math.log(max_logit_scale)
        self.text_cache: FrozenTextCache | None = None  # set by build_eclip(cache_text=True)

    @property
    def has_experts(self) -> bool:
        return self.heatmap_processor is not None

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(image), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text_cache is not None:
            return F.normalize(self.text_cache(tokens), dim=-1)
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

    def encode_expert_image(self, image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
        """Embedding of the expert image HP(I, H), without mixup: the query a reader's gaze steers at reading
        time (similar-case search), in the same space as ``encode_image``."""
        return self.encode_image(self._processor()(image, heatmap))

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

        The main images are encoded first, in a pass of their own, so neither their features nor the random
        draws before them depend on the expert batch; the expert images follow in a second pass that leaves
        batch-norm running statistics untouched (see the class docstring).

        Returns ``image_features`` (main rows, then expert rows), ``text_features`` (L2-normalised),
        ``logit_scale`` and, when ``prime``, ``primed`` = HP(image, 1).
        """
        if (expert_image is None) != (expert_heatmap is None):
            raise ValueError("expert_heatmap: expected expert_image and expert_heatmap together, found only one")
        n_expert = 0 if expert_image is None else expert_image.shape[0]
        if text.shape[0] != image.shape[0] + n_expert:
            raise ValueError(f"text: expected one token row per image ({image.shape[0]} main + {n_expert} expert), "
                             f"found {text.shape[0]}")
        image_features = self.encode_image(image)
        if expert_image is not None:
            mixed = self.expert_images(expert_image, expert_heatmap)
            with frozen_norm_statistics(self.clip):
                image_features = torch.cat([image_features, self.encode_image(mixed)])
        out = {
            "image_features": image_features,
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


def processor_patch_size(image_size: int | Sequence[int], grid: int = PAPER_TOKEN_GRID) -> int:
    """The heatmap processor's patch side for ``image_size`` (an int or (height, width)): the largest patch
    that tiles the image exactly into at least ``grid`` x ``grid`` tokens.

    The paper patchifies 224 px with 16 px patches into 14 x 14 tokens; this keeps that grid at any size that
    is a multiple of 14 (112 px: 8 px patches) and otherwise takes the nearest finer grid, never a coarser one
    (64 px: 4 px patches, 16 x 16 tokens; 256 px: 16 px patches, 16 x 16). Images under ``grid`` pixels a
    side get 1 px patches.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else (int(s) for s in image_size)
    common = math.gcd(height, width)
    limit = min(height, width) // grid
    return max((p for p in range(1, limit + 1) if common % p == 0), default=1)


def build_eclip(
    model_name: str | None = None,
    model_cfg: dict[str, Any] | str | None = None,
    pretrained: str | None = None,
    experts: bool = True,
    hp_dim: int = 256,
    hp_heads: int = 8,
    patch_size: int | None = None,
    mixup_alpha: float = 0.2,
    mixup: bool = True,
    random_heatmaps: bool = False,
    max_logit_scale: float = 100.0,
    lock_text: bool = False,
    cache_text: bool | str = False,
    **tower_kwargs: Any,
) -> ECLIP:
    """One call for bundle configs: towers from ``create_clip_model(**tower_kwargs)`` plus, when ``experts``,
    a heatmap processor over the same number of input channels.

    ``patch_size`` is the processor's patch side; None (the default) gives the paper's 14 x 14 token grid at
    the network's input size (``processor_patch_size``): the ``image_size`` tower argument, else the size the
    tower's config declares, else 16. A checkpoint holds the processor's patch weights, so rebuilding a
    trained network needs the patch it was trained with: the default, when both builds pass the same
    ``image_size``.

    ``lock_text`` freezes the text tower's encoder (its projection stays trainable), LiT-style: with a
    pretrained text tower the image tower then learns towards fixed, already meaningful report embeddings.
    ``cache_text`` (needs ``lock_text`` and a Hugging Face text tower) computes each distinct report's frozen
    encoder output once (``FrozenTextCache``), taking the text tower out of the training step's cost; a path
    instead of True also keeps those outputs in that file for the next process.
    """
    if cache_text and not lock_text:
        raise ValueError("cache_text needs lock_text=True: only a frozen text encoder's output can be cached")
    clip_model = create_clip_model(model_name, model_cfg, pretrained, **tower_kwargs)
    if lock_text:
        clip_model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    processor = None
    if experts:
        if patch_size is None:
            size = tower_kwargs.get("image_size") or getattr(clip_model.visual, "image_size", None)
            patch_size = 16 if size is None else processor_patch_size(size)
        processor = HeatmapProcessor(tower_kwargs.get("in_chans", 1), hp_dim, patch_size, hp_heads)
        processor.to(next(clip_model.parameters()).device)
    network = ECLIP(clip_model, processor, mixup_alpha, mixup, random_heatmaps, max_logit_scale)
    if cache_text:
        path = None if isinstance(cache_text, bool) else cache_text
        network.text_cache = FrozenTextCache(getattr(clip_model, "text", clip_model), path=path)
    return network
