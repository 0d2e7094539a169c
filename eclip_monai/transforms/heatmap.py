"""Radiologist gaze → attention heatmap: a duration-weighted sum of 2-D Gaussians at the fixations.

Axis convention: fixations are a float (N, 3) array ``[x, y, duration_s]`` in *original* image pixels with
x = column and y = row (pixel centres at integers); the heatmap is (1, H, W) = (1, rows, cols) in the same
frame as the (C, H, W) image, so MONAI spatial dictionary transforms applied to both keys keep them aligned.

The map is computed directly at the working resolution (no full-size map is ever built): fixation centres
and σ are scaled from the original shape (``meta["spatial_shape"]``) to the image's current shape, with
MONAI's pixel-centre convention (``x' = (x + 0.5)·W/W0 − 0.5``, as ``Resize``, ``align_corners=False``).
Each Gaussian is separable, so the whole map is a matmul of per-axis profiles (N, H)ᵀ·(N, W), summed over
chunks of fixations so a recording of a million fixations needs no more memory than a short one; clipping to
the shown region (REFLACX ``{x,y}{min,max}_shown_from_image``, possibly per fixation) is a rectangle and
stays separable. Fixations whose centre lies off the image (or outside its shown region) are dropped:
the reader could not have been looking at image content there, so neither their peak nor their tails
count. σ below half an output pixel is raised to it, so a narrow Gaussian never falls between samples.
The result is normalised per image to max 1 and stays float32 (never uint8, which would zero most of it).
Compute the heatmap right after loading/resizing, before any crop, flip or rotation of the image.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from eclip_monai.errors import CXRDataError

__all__ = ["FixationsToHeatmap", "FixationsToHeatmapd"]

_MIN_SIGMA_PX = 0.5
_CHUNK = 4096  # fixations per matmul: memory stays O(chunk x (H + W)) however long the recording


class FixationsToHeatmap(Transform):
    """Render fixations as a (1, H, W) float32 heatmap with max 1.

    Args:
        sigma: Gaussian standard deviation, in degrees of visual angle (paper: 1°) or original-image pixels.
        sigma_unit: ``"deg"`` (σ_px = sigma × pixels_per_degree) or ``"px"``.
        default_pixels_per_degree: used when a sample has no pixels-per-degree of its own (EGD-CXR gives
            none); without it, degrees and no per-sample value raise ``CXRDataError``.
    """

    def __init__(self, sigma: float = 1.0, sigma_unit: str = "deg",
                 default_pixels_per_degree: float | None = None):
        if sigma_unit not in ("deg", "px"):
            raise ValueError(f"sigma_unit must be 'deg' or 'px', got {sigma_unit!r}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.sigma = float(sigma)
        self.sigma_unit = sigma_unit
        self.default_pixels_per_degree = default_pixels_per_degree

    def __call__(
        self,
        fixations,
        spatial_size: Sequence[int],
        original_size: Sequence[int] | None = None,
        pixels_per_degree=None,
        shown_region=None,
        path: str | None = None,
    ) -> torch.Tensor:
        """
        Args:
            fixations: (N, 3) ``[x, y, duration_s]`` in original pixels.
            spatial_size: (H, W) of the output, i.e. the image's current shape.
            original_size: (H0, W0) the fixations refer to; defaults to ``spatial_size``.
            pixels_per_degree: a scalar, or per fixation (N,) or (N, 2) as (x, y); original pixels per degree.
            shown_region: ``[xmin, ymin, xmax, ymax]`` in original pixels, (4,) or per fixation (N, 4).
            path: the image file, named in errors.
        """
        height, width = (int(s) for s in spatial_size)
        orig_h, orig_w = (int(s) for s in (original_size if original_size is not None else spatial_size))
        fix = _as_float(fixations, path, "fixations")
        if fix.ndim != 2 or fix.shape[1] != 3 or len(fix) == 0:
            raise CXRDataError(f"expected a non-empty (N, 3) array [x, y, duration_s], found shape "
                               f"{fix.shape}", path=path, field="fixations")
        if not np.isfinite(fix).all():
            raise CXRDataError(f"expected finite values, found {int((~np.isfinite(fix)).sum())} NaN/inf",
                               path=path, field="fixations")
        if (fix[:, 2] < 0).any():
            raise CXRDataError("expected durations >= 0, found negative ones", path=path, field="fixations")
        x, y, duration = fix.T
        sigma = self._sigma_px(pixels_per_degree, len(fix), path)  # (N, 2) as (x, y), original pixels
        region = _region(shown_region, len(fix), orig_h, orig_w, path)  # (N, 4) xmin, ymin, xmax, ymax
        keep = (region[:, 0] <= x) & (x <= region[:, 2]) & (region[:, 1] <= y) & (y <= region[:, 3])
        if not keep.any():
            raise CXRDataError(f"none of {len(fix)} fixations falls on the {orig_w}x{orig_h} (WxH) image or "
                               "its shown region", path=path, field="fixations")
        scale_y, scale_x = height / orig_h, width / orig_w
        x, y, duration, sigma, region = x[keep], y[keep], duration[keep], sigma[keep], region[keep]
        heat = np.zeros((height, width))
        for i in range(0, len(x), _CHUNK):
            part = slice(i, i + _CHUNK)
            rows = _profiles(y[part], sigma[part, 1], region[part][:, [1, 3]], height, scale_y)  # (n, H)
            cols = _profiles(x[part], sigma[part, 0], region[part][:, [0, 2]], width, scale_x)  # (n, W)
            heat += (rows * duration[part, None]).T @ cols
        peak = heat.max()
        if not peak > 0:
            raise CXRDataError("expected some fixation duration > 0 on the image, found none", path=path,
                               field="fixations")
        return torch.from_numpy((heat / peak).astype(np.float32)[None])

    def _sigma_px(self, pixels_per_degree, count: int, path: str | None) -> np.ndarray:
        if self.sigma_unit == "px":
            return np.full((count, 2), self.sigma)
        ppd = pixels_per_degree if pixels_per_degree is not None else self.default_pixels_per_degree
        if ppd is None:
            raise CXRDataError("sigma is in degrees of visual angle, so pixels per degree are needed; found "
                               "none (pass them with the sample or set default_pixels_per_degree)", path=path,
                               field="pixels_per_degree")
        ppd = _as_float(ppd, path, "pixels_per_degree")
        valid = np.isfinite(ppd).all() and (ppd > 0).all()
        if ppd.shape not in ((), (1,), (count,), (count, 2)) or not valid:
            raise CXRDataError(f"expected positive finite values, a scalar, ({count},) or ({count}, 2), "
                               f"found shape {ppd.shape}", path=path, field="pixels_per_degree")
        per_axis = ppd if ppd.shape == (count, 2) else ppd.reshape(-1, 1)
        return self.sigma * np.broadcast_to(per_axis, (count, 2))


class FixationsToHeatmapd(MapTransform):
    """Dictionary version of :class:`FixationsToHeatmap`, sized by a reference image.

    The output shape is the reference image's current spatial shape; the fixations' frame is its
    ``meta["spatial_shape"]`` (set by ``LoadCXRDicom``). The heatmap is a ``MetaTensor`` that carries the
    image's meta (affine, file name, applied operations), so inverting transforms treats both alike.

    Args:
        keys: fixation keys, each (N, 3) ``[x, y, duration_s]``.
        ref_key: the image the heatmap must match.
        heatmap_keys: where to write each heatmap (one per key).
        pixels_per_degree_key: optional per-sample pixels per degree (REFLACX gives them).
        shown_region_key: optional per-sample ``[xmin, ymin, xmax, ymax]`` (REFLACX).
        sigma, sigma_unit, default_pixels_per_degree: see :class:`FixationsToHeatmap`.
    """

    def __init__(
        self,
        keys: KeysCollection = "fixations",
        ref_key: str = "image",
        heatmap_keys: KeysCollection = "heatmap",
        pixels_per_degree_key: str = "pixels_per_degree",
        shown_region_key: str = "shown_region",
        sigma: float = 1.0,
        sigma_unit: str = "deg",
        default_pixels_per_degree: float | None = None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.ref_key = ref_key
        self.heatmap_keys = ensure_tuple_rep(heatmap_keys, len(self.keys))
        self.pixels_per_degree_key = pixels_per_degree_key
        self.shown_region_key = shown_region_key
        self.render = FixationsToHeatmap(sigma, sigma_unit, default_pixels_per_degree)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image = d.get(self.ref_key)
        if image is None:
            raise KeyError(f"{self.ref_key}: the reference image that sizes the heatmap is not in the sample; "
                           f"check ref_key and the transforms before this one")
        meta = image.meta if isinstance(image, MetaTensor) else {}
        path = meta.get("filename_or_obj")
        current = tuple(image.shape[1:])
        original = tuple(int(s) for s in meta.get("spatial_shape", current))
        for key, heatmap_key in zip(self.keys, self.heatmap_keys):
            if key not in d:
                if self.allow_missing_keys:
                    continue
                raise CXRDataError("expected fixations for the gaze heatmap, found none", path=path,
                                   field=key)
            heat = self.render(d[key], current, original, d.get(self.pixels_per_degree_key),
                               d.get(self.shown_region_key), path=path)
            heat = MetaTensor(heat)
            if isinstance(image, MetaTensor):
                heat.copy_meta_from(image)
            d[heatmap_key] = heat
        return d


def _as_float(value, path: str | None, field: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CXRDataError(f"expected numbers, found {type(value).__name__}", path=path, field=field) from exc


def _region(shown_region, count: int, orig_h: int, orig_w: int, path: str | None) -> np.ndarray:
    """Per-fixation [xmin, ymin, xmax, ymax], intersected with the image's pixel extent."""
    extent = np.array([-0.5, -0.5, orig_w - 0.5, orig_h - 0.5])
    if shown_region is None:
        return np.broadcast_to(extent, (count, 4))
    region = _as_float(shown_region, path, "shown_region")
    if region.shape not in ((4,), (count, 4)) or not np.isfinite(region).all():
        raise CXRDataError(f"expected finite [xmin, ymin, xmax, ymax], (4,) or ({count}, 4), found shape "
                           f"{region.shape}", path=path, field="shown_region")
    region = np.broadcast_to(region, (count, 4))
    low, high = np.maximum(region[:, :2], extent[:2]), np.minimum(region[:, 2:], extent[2:])
    return np.concatenate([low, high], axis=1)


def _profiles(centre, sigma, bounds, size: int, scale: float) -> np.ndarray:
    """(N, size) Gaussian profiles along one axis at the output resolution, zero outside ``bounds``."""
    grid = np.arange(size, dtype=np.float64)
    original = (grid + 0.5) / scale - 0.5  # each output sample's position in original pixels
    mu = (centre + 0.5) * scale - 0.5
    s = np.maximum(sigma * scale, _MIN_SIGMA_PX)
    profile = np.exp(-0.5 * ((grid[None] - mu[:, None]) / s[:, None]) ** 2)
    inside = (original[None] >= bounds[:, :1]) & (original[None] <= bounds[:, 1:])
    return profile * inside
