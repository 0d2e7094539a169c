"""Combine an image with its gaze heatmap: the product the heatmap processor attends with, or a colour view.

Axis convention: image (C, H, W), heatmap (1, H, W) in the same frame (see ``heatmap.py``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from matplotlib import colormaps
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from eclip_monai.errors import CXRDataError

__all__ = ["HeatmapOverlay", "HeatmapOverlayd"]


class HeatmapOverlay(Transform):
    """``mode="multiply"``: H ⊙ I, the heatmap broadcast over the image channels (the expert-image query).
    ``mode="color"``: an RGB (3, H, W) float image in [0, 1], the min-max scaled grayscale image blended
    with ``colormap(H)`` at opacity ``alpha · H``, so the image shows through where the reader did not look.
    """

    def __init__(self, mode: str = "multiply", colormap: str = "jet", alpha: float = 0.6):
        if mode not in ("multiply", "color"):
            raise ValueError(f"mode must be 'multiply' or 'color', got {mode!r}")
        self.mode = mode
        self.alpha = alpha
        self.lut = torch.as_tensor(colormaps[colormap].resampled(256)(range(256))[:, :3], dtype=torch.float32)

    def __call__(self, image: torch.Tensor, heatmap: torch.Tensor) -> torch.Tensor:
        image, heatmap = torch.as_tensor(image), torch.as_tensor(heatmap)
        if heatmap.ndim != 3 or heatmap.shape[0] != 1 or heatmap.shape[1:] != image.shape[1:]:
            path = image.meta.get("filename_or_obj") if isinstance(image, MetaTensor) else None
            expected = (1, *image.shape[1:])
            found = tuple(heatmap.shape)
            raise CXRDataError(f"expected a {expected} heatmap matching the image, found {found}", path=path,
                               field="heatmap")
        heat = heatmap.to(torch.float32).clamp(0, 1)
        if self.mode == "multiply":
            return image * heat
        gray = image.to(torch.float32).mean(0, keepdim=True)
        gray = (gray - gray.min()) / (gray.max() - gray.min()).clamp_min(1e-12)
        colour = self.lut.to(heat.device)[(heat[0] * 255).round().long()].permute(2, 0, 1)
        opacity = self.alpha * heat
        return (1 - opacity) * gray.expand(3, -1, -1) + opacity * colour


class HeatmapOverlayd(MapTransform):
    """Dictionary version of :class:`HeatmapOverlay`: ``d[output_key] = overlay(d[key], d[heatmap_key])``."""

    def __init__(
        self,
        keys: KeysCollection = "image",
        heatmap_key: str = "heatmap",
        output_keys: KeysCollection = "overlay",
        mode: str = "multiply",
        colormap: str = "jet",
        alpha: float = 0.6,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.heatmap_key = heatmap_key
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys))
        self.overlay = HeatmapOverlay(mode, colormap, alpha)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            if self.heatmap_key not in d:
                path = d[key].meta.get("filename_or_obj") if isinstance(d[key], MetaTensor) else None
                raise CXRDataError("expected a heatmap to overlay, found none", path=path,
                                   field=self.heatmap_key)
            d[output_key] = self.overlay(d[key], d[self.heatmap_key])
        return d
