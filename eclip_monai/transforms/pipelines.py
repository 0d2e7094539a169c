"""Train and eval transform chains: DICOM + report (+ gaze) → image (1, S, S), heatmap (1, S, S), text (L,).

Items look like ``{"image": dicom_path, "report": text_or_txt_path, "fixations": (N, 3) [x, y, duration_s],
"pixels_per_degree": float, "shown_region": [xmin, ymin, xmax, ymax]}`` (gaze keys only with a heatmap).

Caching: every deterministic step (DICOM load, shortest-side pre-resize, gaze heatmap at that resolution,
report sections, tokenisation) comes first, in :func:`deterministic_prefix`, and the first random transform
(``RandResizedCropd``) follows it. ``monai.data.CacheDataset`` and ``PersistentDataset`` cache exactly the
transforms before the first ``Randomizable`` one, so passing :func:`train_transforms` to either caches the
prefix and reruns only crop, CLAHE and normalisation each epoch; eval chains hold no random step and cache
whole. The raw gaze keys are dropped once the heatmap exists: they vary in length (so would not batch) and
no longer match the image after a crop.

Eval is deterministic (shortest side to S, centre crop), as open_clip does; random augmentation at eval
time would make metrics noisy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monai.transforms import CenterSpatialCropd, Compose, DeleteItemsd, MapTransform, NormalizeIntensityd, Transform

from eclip_monai.transforms.augment import RandCLAHEd, RandResizedCropd, ResizeShortestSided
from eclip_monai.transforms.dicom import LoadCXRDicomd
from eclip_monai.transforms.heatmap import FixationsToHeatmapd
from eclip_monai.transforms.text import ExtractReportSectiond, TokenizeTextd

__all__ = ["CXRKeys", "deterministic_prefix", "eval_transforms", "shard_transforms", "train_transforms"]

PRE_RESIZE_FACTOR = 1.15  # train crops are drawn from a slightly larger image, as CLIP recipes do


@dataclass(frozen=True)
class CXRKeys:
    """Names of the item fields the pipelines read and write."""

    image: str = "image"
    report: str = "report"
    text: str = "text"
    fixations: str = "fixations"
    heatmap: str = "heatmap"
    pixels_per_degree: str = "pixels_per_degree"
    shown_region: str = "shown_region"


def deterministic_prefix(
    shortest_side: int,
    *,
    keys: CXRKeys = CXRKeys(),
    with_heatmap: bool = False,
    tokenizer=None,
    report_sections: Sequence[str] | None = None,
    sigma_deg: float = 1.0,
    default_pixels_per_degree: float | None = None,
    loader: type[MapTransform] = LoadCXRDicomd,
) -> list[Transform]:
    """Load, resize the shortest side to ``shortest_side``, [heatmap], [report sections], [tokenise].

    ``loader`` reads ``keys.image``: ``LoadCXRDicomd`` (training data is DICOM) or ``transforms.LoadCXRImaged``
    (DICOM, PNG/JPG and NIfTI alike, for evaluation sets and inference inputs).

    ``report_sections`` (e.g. ``("findings", "impression")``) extracts sections from raw reports or ``.txt``
    paths, falling back to the whole report; leave it ``None`` when the datalist already holds the text.
    Without a ``tokenizer`` the report is left untouched (image-only inference).
    """
    chain: list[Transform] = [
        loader(keys.image),
        ResizeShortestSided(keys.image, shortest_side, mode="area"),
    ]
    if with_heatmap:
        chain.append(FixationsToHeatmapd(
            keys.fixations, ref_key=keys.image, heatmap_keys=keys.heatmap,
            pixels_per_degree_key=keys.pixels_per_degree, shown_region_key=keys.shown_region,
            sigma=sigma_deg, sigma_unit="deg", default_pixels_per_degree=default_pixels_per_degree,
        ))
    chain.append(DeleteItemsd([keys.fixations, keys.pixels_per_degree, keys.shown_region]))
    if report_sections is not None:
        chain.append(ExtractReportSectiond(keys.report, report_sections, fallback_to_full=True))
    if tokenizer is not None:
        chain.append(TokenizeTextd(keys.report, keys.text, tokenizer=tokenizer))
    return chain


def train_transforms(
    image_size: int = 224,
    *,
    keys: CXRKeys = CXRKeys(),
    with_heatmap: bool = False,
    tokenizer=None,
    pre_resize: int | None = None,
    mean: float = 0.58,
    std: float = 0.26,
    clahe_prob: float = 0.3,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    sigma_deg: float = 1.0,
    default_pixels_per_degree: float | None = None,
    report_sections: Sequence[str] | None = None,
    loader: type[MapTransform] = LoadCXRDicomd,
) -> Compose:
    """Training chain: :func:`deterministic_prefix` at ``pre_resize`` (default 1.15 × ``image_size``), then a
    random resized crop of image and heatmap together, CLAHE on the image, and mean/std normalisation."""
    spatial = [keys.image, keys.heatmap] if with_heatmap else [keys.image]
    prefix = deterministic_prefix(pre_resize or round(PRE_RESIZE_FACTOR * image_size), keys=keys,
                                  with_heatmap=with_heatmap, tokenizer=tokenizer,
                                  report_sections=report_sections, sigma_deg=sigma_deg,
                                  default_pixels_per_degree=default_pixels_per_degree, loader=loader)
    return Compose([
        *prefix,
        RandResizedCropd(spatial, image_size, scale=crop_scale, mode="bilinear"),
        RandCLAHEd(keys.image, prob=clahe_prob),
        NormalizeIntensityd(keys.image, subtrahend=mean, divisor=std),
    ])


def eval_transforms(
    image_size: int = 224,
    *,
    keys: CXRKeys = CXRKeys(),
    with_heatmap: bool = False,
    tokenizer=None,
    mean: float = 0.58,
    std: float = 0.26,
    sigma_deg: float = 1.0,
    default_pixels_per_degree: float | None = None,
    report_sections: Sequence[str] | None = None,
    loader: type[MapTransform] = LoadCXRDicomd,
) -> Compose:
    """Evaluation chain: shortest side to ``image_size``, centre crop, normalisation; fully deterministic."""
    spatial = [keys.image, keys.heatmap] if with_heatmap else [keys.image]
    prefix = deterministic_prefix(image_size, keys=keys, with_heatmap=with_heatmap, tokenizer=tokenizer,
                                  report_sections=report_sections, sigma_deg=sigma_deg,
                                  default_pixels_per_degree=default_pixels_per_degree, loader=loader)
    return Compose([
        *prefix,
        CenterSpatialCropd(spatial, image_size),
        NormalizeIntensityd(keys.image, subtrahend=mean, divisor=std),
    ])


def shard_transforms(image_size: int) -> Compose:
    """What a preprocess-once shard stores (``data/shards.py``): the evaluation chain without its
    normalisation, so the [0, 1] image fits uint8; training then reads it with ``loader=Identityd``."""
    return eval_transforms(image_size, mean=0.0, std=1.0)
