"""Spatial and contrast transforms for (image, heatmap) pairs that MONAI 1.6 lacks.

MONAI has no random-*resized*-crop with torchvision's area/aspect sampling (``RandScaleCrop`` and
``RandSpatialCrop`` draw sizes per axis and do not resize), no shortest-side resize (``Resize`` knows
"all" and "longest") and no CLAHE (``HistogramNormalize`` is global). These are built from MONAI's
``SpatialCrop`` and ``Resize``, so the crop and resize are traced on ``MetaTensor`` inputs as usual.

Axis convention: (C, H, W) = (C, rows, cols) for images and (1, H, W) for heatmaps; dictionary versions draw
one random box per call and apply it to every key, so a heatmap stays aligned with its image.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, RandomizableTransform, Resize, SpatialCrop, Transform
from monai.utils import convert_to_dst_type, ensure_tuple_rep
from skimage.exposure import equalize_adapthist

__all__ = [
    "CLAHE",
    "RandCLAHEd",
    "RandResizedCrop",
    "RandResizedCropd",
    "ResizeShortestSide",
    "ResizeShortestSided",
]


class RandResizedCrop(RandomizableTransform):
    """Crop a random box and resize it to ``spatial_size`` (torchvision ``RandomResizedCrop`` semantics).

    The box covers a fraction of the image area drawn uniformly from ``scale`` with width/height drawn
    log-uniformly from ``ratio``; after 10 draws that do not fit, the largest centred box within ``ratio``
    is used. With probability ``1 - prob`` the whole image is resized instead, so the output size never
    changes.
    """

    def __init__(
        self,
        spatial_size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mode: str = "bilinear",
        prob: float = 1.0,
    ):
        RandomizableTransform.__init__(self, prob)
        self.spatial_size = ensure_tuple_rep(spatial_size, 2)
        self.scale = scale
        self.ratio = ratio
        self.mode = mode
        self.box: tuple[int, int, int, int] | None = None  # top, left, height, width

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        super().randomize(None)
        height, width = (int(s) for s in spatial_shape)
        self.box = self._draw_box(height, width) if self._do_transform else (0, 0, height, width)

    def _draw_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        area, log_ratio = height * width, (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * self.R.uniform(*self.scale)
            aspect = math.exp(self.R.uniform(*log_ratio))
            w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                return int(self.R.randint(0, height - h + 1)), int(self.R.randint(0, width - w + 1)), h, w
        aspect = width / height
        if aspect < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif aspect > max(self.ratio):
            w, h = round(height * max(self.ratio)), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: torch.Tensor, mode: str | None = None, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(img.shape[1:])
        if self.box is None:
            raise RuntimeError("call randomize() before applying RandResizedCrop with randomize=False")
        top, left, h, w = self.box
        cropped = SpatialCrop(roi_start=(top, left), roi_end=(top + h, left + w))(img)
        return Resize(self.spatial_size, mode=mode or self.mode)(cropped)


class RandResizedCropd(Randomizable, MapTransform):
    """Dictionary version of :class:`RandResizedCrop`: one box, drawn from the first key's shape, for all.

    ``mode`` is per key (e.g. ``("area", "bilinear")`` for image and heatmap).
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mode: str | Sequence[str] = "bilinear",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.cropper = RandResizedCrop(spatial_size, scale, ratio, prob=prob)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        self.cropper.randomize(spatial_shape)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        first = self.first_key(d)
        if first == ():
            return d
        self.randomize(d[first].shape[1:])
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.cropper(d[key], mode=mode, randomize=False)
        return d


class ResizeShortestSide(Transform):
    """Resize so the shorter spatial side equals ``size``, keeping the aspect (open_clip's eval resize)."""

    def __init__(self, size: int, mode: str = "area"):
        self.size = int(size)
        self.mode = mode

    def __call__(self, img: torch.Tensor, mode: str | None = None) -> torch.Tensor:
        height, width = img.shape[1:]
        factor = self.size / min(height, width)
        shape = (max(self.size, round(height * factor)), max(self.size, round(width * factor)))
        return Resize(shape, mode=mode or self.mode)(img)


class ResizeShortestSided(MapTransform):
    """Dictionary version of :class:`ResizeShortestSide`, with ``mode`` per key."""

    def __init__(self, keys: KeysCollection, size: int, mode: str | Sequence[str] = "area",
                 allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.resizer = ResizeShortestSide(size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, mode in self.key_iterator(d, self.mode):
            d[key] = self.resizer(d[key], mode=mode)
        return d


class CLAHE(Transform):
    """Contrast-limited adaptive histogram equalisation per channel (skimage ``equalize_adapthist``).

    Expects intensities in [0, 1] (apply before mean/std normalisation); values outside are clipped.
    """

    def __init__(self, clip_limit: float = 0.01, kernel_size: int | Sequence[int] | None = None):
        self.clip_limit = clip_limit
        self.kernel_size = kernel_size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        array = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        channels = np.clip(array.astype(np.float64), 0, 1)
        out = np.stack([equalize_adapthist(c, self.kernel_size, self.clip_limit) for c in channels])
        return convert_to_dst_type(out.astype(np.float32), img, dtype=torch.float32)[0]


class RandCLAHEd(RandomizableTransform, MapTransform):
    """Apply :class:`CLAHE` to ``keys`` (the image only, never the heatmap) with probability ``prob``."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, clip_limit: float = 0.01,
                 kernel_size: int | Sequence[int] | None = None, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.clahe = CLAHE(clip_limit, kernel_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            for key in self.key_iterator(d):
                d[key] = self.clahe(d[key])
        return d
