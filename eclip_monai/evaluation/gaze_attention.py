"""Gaze attention of one network over studies with truth: where it looks when it matches a finding prompt.

Items are MONAI data dicts ``{"image": dicom_path, "findings": [{"name", "x", "y", "rx", "ry"[, "angle"]}],
"fixations", "pixels_per_degree"[, "shown_region"]}``: finding ellipses in original DICOM pixels (x = column,
as the phantom's truth records them), gaze as for ``transforms.pipelines``. Either may be missing; the split
an item comes from does not matter. :func:`gaze_attention_datalist` builds them from a phantom world.

Geometry: each finding's ellipses are rasterised at the DICOM's own size (:class:`FindingMasksd`, right after
loading) and the mask goes through the same shortest-side resize and centre crop as the image; the gaze
heatmap is rendered exactly as in ``eval_transforms(with_heatmap=True)``. So mask, heatmap and saliency share
the image's frame whatever the crop cuts off.

Scoring (``metrics.gaze_attention``): each finding present in a study (all drawn findings, hedged or not)
is explained once, with its positive prompt ensemble (``networks.zero_shot.finding_prompts``), and that map
is scored against the union of that finding's ellipses (a bilateral finding has one per side). The map
scored against the study's gaze is the *union of its findings' maps*: each clipped at 0 and normalised to sum
1, then averaged, i.e. where the model looks for what the study shows. Studies without a finding have no
prompt to explain, so their gaze is not scored (counted as ``n_gaze_without_findings``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    DeleteItemsd,
    MapTransform,
    NormalizeIntensityd,
    Transform,
)
from monai.utils import convert_to_tensor
from torch import nn
from tqdm import tqdm

from eclip_monai.data.egd_cxr import DEFAULT_SCREEN_PIXELS_PER_DEGREE
from eclip_monai.data.expert import build_expert_datalist
from eclip_monai.data.formats import EGD_FIXATIONS_CSV, FRONTAL_VIEWS
from eclip_monai.data.mimic import build_mimic_datalist
from eclip_monai.data.phantom.generate import DATASET_DIRS, TRUTH_FILE
from eclip_monai.data.robust import SkipBadSamples
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.embed import prompt_class_embeddings
from eclip_monai.evaluation.figures import new_figure, save_figure
from eclip_monai.metrics.gaze_attention import (
    GAZE_TOP_FRACTION,
    SCORE_KEYS,
    ellipse_mask,
    gaze_attention_scores,
    similarity_saliency,
    summarise_scores,
)
from eclip_monai.prompts import finding_prompts
from eclip_monai.transforms.augment import ResizeShortestSided
from eclip_monai.transforms.dicom import LoadCXRDicomd
from eclip_monai.transforms.heatmap import FixationsToHeatmapd
from eclip_monai.transforms.pipelines import CXRKeys

logger = logging.getLogger(__name__)

FINDINGS_KEY = "findings"
MASK_KEY = "finding_mask"  # (F, H, W), one channel per finding name
NAMES_KEY = "finding_names"
REQUIRE = ("any", "gaze", "findings", "both")


class FindingMasks(Transform):
    """Finding records → (names, (F, H, W) float32 masks), one channel per distinct name holding the union
    of that name's ellipses, in order of first appearance. Records are in ``original_size`` pixels (default:
    ``spatial_size``) and are scaled to ``spatial_size`` with MONAI's pixel-centre convention."""

    def __call__(self, findings: Sequence[Mapping], spatial_size: Sequence[int],
                 original_size: Sequence[int] | None = None, path: str | None = None
                 ) -> tuple[list[str], torch.Tensor]:
        height, width = (int(s) for s in spatial_size)
        orig_h, orig_w = (int(s) for s in (original_size or spatial_size))
        sy, sx = height / orig_h, width / orig_w
        masks: dict[str, np.ndarray] = {}
        for finding in findings:
            try:
                name = str(finding["name"])
                x, y, rx, ry = (float(finding[k]) for k in ("x", "y", "rx", "ry"))
                angle = float(finding.get("angle", 0.0))
            except (KeyError, TypeError, ValueError) as exc:
                raise CXRDataError(f"expected a finding record with name, x, y, rx, ry (numbers), found "
                                   f"{finding!r}", path=path, field=FINDINGS_KEY) from exc
            if sx != sy and angle:
                raise CXRDataError("expected an axis-aligned ellipse where the image is scaled unevenly, "
                                   f"found angle {angle}", path=path, field=FINDINGS_KEY)
            mask = ellipse_mask((x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5, rx * sx, ry * sy, (height, width),
                                angle)
            masks[name] = masks[name] | mask if name in masks else mask
        stacked = np.stack(list(masks.values())) if masks else np.zeros((0, height, width), bool)
        return list(masks), torch.from_numpy(stacked.astype(np.float32))


class FindingMasksd(MapTransform):
    """Dictionary version of :class:`FindingMasks`, sized by the reference image.

    Writes ``mask_key`` (a ``MetaTensor`` carrying the image's meta) and ``names_key``; an item without
    findings gets neither, so later transforms must allow the mask key to be missing. Place it right after
    loading: the mask is then drawn at the DICOM's full size and resized with the image.
    """

    def __init__(self, keys: KeysCollection = FINDINGS_KEY, ref_key: str = "image", mask_key: str = MASK_KEY,
                 names_key: str = NAMES_KEY, allow_missing_keys: bool = True):
        super().__init__(keys, allow_missing_keys)
        self.ref_key, self.mask_key, self.names_key = ref_key, mask_key, names_key
        self.render = FindingMasks()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        image = d[self.ref_key]
        meta = image.meta if isinstance(image, MetaTensor) else {}
        current = tuple(image.shape[1:])
        original = tuple(int(s) for s in meta.get("spatial_shape", current))
        for key in self.key_iterator(d):
            names, masks = self.render(d[key] or (), current, original, meta.get("filename_or_obj"))
            if names:
                masks = MetaTensor(masks)
                if isinstance(image, MetaTensor):
                    masks.copy_meta_from(image)
                d[self.mask_key], d[self.names_key] = masks, names
        return d


def gaze_attention_transforms(
    image_size: int = 224,
    *,
    keys: CXRKeys = CXRKeys(),
    mean: float = 0.58,
    std: float = 0.26,
    sigma_deg: float = 1.0,
    default_pixels_per_degree: float | None = None,
) -> Compose:
    """``eval_transforms(image_size, with_heatmap=True)`` with finding masks added and gaze optional: load,
    masks at full size, shortest side to ``image_size`` (image and masks), heatmap, centre crop of all three,
    normalisation of the image. Image and heatmap come out identical to ``eval_transforms``'s."""
    spatial = [keys.image, MASK_KEY]
    return Compose([
        LoadCXRDicomd(keys.image),
        FindingMasksd(FINDINGS_KEY, ref_key=keys.image),
        ResizeShortestSided(spatial, image_size, mode="area", allow_missing_keys=True),
        FixationsToHeatmapd(
            keys.fixations, ref_key=keys.image, heatmap_keys=keys.heatmap,
            pixels_per_degree_key=keys.pixels_per_degree, shown_region_key=keys.shown_region,
            sigma=sigma_deg, sigma_unit="deg", default_pixels_per_degree=default_pixels_per_degree,
            allow_missing_keys=True,
        ),
        DeleteItemsd([keys.fixations, keys.pixels_per_degree, keys.shown_region]),
        CenterSpatialCropd([*spatial, keys.heatmap], image_size, allow_missing_keys=True),
        NormalizeIntensityd(keys.image, subtrahend=mean, divisor=std),
    ])


def read_phantom_findings(dataset_dir: str | os.PathLike) -> dict[str, list[dict]]:
    """``dicom_id -> finding records`` from the phantom's truth file (``phantom_truth.jsonl`` at the world's
    root, or under ``mimic-cxr/``)."""
    root = Path(dataset_dir)
    candidates = [root / TRUTH_FILE, root / DATASET_DIRS["mimic"] / TRUTH_FILE]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise CXRDataError(f"file not found; expected the phantom's truth records {TRUTH_FILE} in {root} or "
                           f"{candidates[1].parent}", path=candidates[0])
    truth = {}
    for line_number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            truth[str(record["dicom_id"])] = list(record.get(FINDINGS_KEY) or [])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CXRDataError(f"expected a JSON record with dicom_id at line {line_number}, found "
                               f"{line[:80]!r}", path=path, field="dicom_id") from exc
    return truth


def gaze_attention_datalist(
    dataset_dir: str | os.PathLike,
    splits: Sequence[str] = ("test",),
    require: str = "any",
    how: str = "concat",
    egd_screen_pixels_per_degree: float | None = DEFAULT_SCREEN_PIXELS_PER_DEGREE,
) -> list[dict]:
    """Frontal images of ``splits`` of a phantom world (``mimic-cxr/``, ``egd-cxr/``, ``reflacx/`` and the
    truth file) with their findings and, where EGD-CXR or REFLACX read them, their gaze.

    ``require`` keeps images with gaze or findings (``"any"``), gaze, findings, or ``"both"``. Gaze sources
    whose folders are absent are not read; several readings of an image are combined by ``how`` (see
    ``data.gaze.attach_gaze``).
    """
    if require not in REQUIRE:
        raise ValueError(f"require must be one of {REQUIRE}, got {require!r}")
    root = Path(dataset_dir)
    mimic_root = root / DATASET_DIRS["mimic"]
    truth = read_phantom_findings(root)
    items = build_mimic_datalist(mimic_root, splits=splits, views=FRONTAL_VIEWS)
    egd_root, reflacx_root = root / DATASET_DIRS["egd"], root / DATASET_DIRS["reflacx"]
    gazed = build_expert_datalist(
        items, egd_root if (egd_root / EGD_FIXATIONS_CSV).is_file() else None,
        reflacx_root if reflacx_root.is_dir() else None, mimic_root, how=how,
        egd_screen_pixels_per_degree=egd_screen_pixels_per_degree,
    )
    gaze_of = {item["dicom_id"]: item for item in gazed}
    selected = []
    for item in items:
        findings = truth.get(item["dicom_id"], [])
        has_gaze, has_findings = item["dicom_id"] in gaze_of, bool(findings)
        wanted = {"any": has_gaze or has_findings, "gaze": has_gaze, "findings": has_findings,
                  "both": has_gaze and has_findings}[require]
        if wanted:
            selected.append({**gaze_of.get(item["dicom_id"], item), FINDINGS_KEY: findings})
    logger.info("Gaze-attention datalist from %s (%s): %d of %d frontal images, %d with gaze.", root,
                "+".join(splits), len(selected), len(items), sum("fixations" in i for i in selected))
    return selected


@dataclass
class GazeAttentionExample:
    """One study's maps for a figure, all (H, W) in the network's input frame."""

    dicom_id: str
    image: np.ndarray
    saliency: np.ndarray  # union of the findings' normalised saliency maps
    finding_mask: np.ndarray  # union of the findings' regions
    heatmap: np.ndarray | None
    findings: list[str]
    scores: dict[str, float]


@dataclass
class GazeAttentionResult:
    """``scores``: flat means and counts (see :func:`evaluate_gaze_attention`); ``examples``: maps of the
    first studies, those with gaze first."""

    scores: dict[str, float | int]
    examples: list[GazeAttentionExample] = field(default_factory=list)


def _only(batch: list):
    return batch[0]


def _union(maps: torch.Tensor) -> torch.Tensor:
    """(F, H, W) → (1, H, W): the mean of the maps' positive parts, each normalised to sum 1."""
    positive = maps.clamp_min(0)
    total = positive.sum(dim=(1, 2), keepdim=True)
    return (positive / total.clamp_min(torch.finfo(maps.dtype).tiny)).mean(0, keepdim=True)


def _binary(masks: torch.Tensor) -> torch.Tensor:
    """Area-resized masks → bool at coverage ≥ 0.5; a region smaller than that keeps its best-covered pixel,
    so a small nodule never vanishes at a low working resolution."""
    binary = masks >= 0.5
    flat = masks.flatten(1)
    lost = (flat.amax(1) > 0) & ~binary.flatten(1).any(1)
    for channel in lost.nonzero().flatten().tolist():
        binary.view(binary.shape[0], -1)[channel, flat[channel].argmax()] = True
    return binary


def evaluate_gaze_attention(
    network: nn.Module,
    tokenizer,
    datalist: Sequence[dict],
    *,
    image_size: int = 224,
    method: str = "occlusion",
    terms: Mapping[str, Sequence[str]] | None = None,
    top_fraction: float = GAZE_TOP_FRACTION,
    examples: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    sigma_deg: float = 1.0,
    default_pixels_per_degree: float | None = None,
    mean: float = 0.58,
    std: float = 0.26,
    progress: bool = True,
    **saliency_kwargs,
) -> GazeAttentionResult:
    """Explain each present finding's prompt on each study of ``datalist`` and score the maps against the
    finding regions and the gaze (see the module docstring for which map meets which truth).

    ``saliency_kwargs`` go to ``metrics.gaze_attention.similarity_saliency`` (``mask_size``, ``overlap``,
    ``n_batch``, ``target_layer``...); ``terms`` overrides the prompt wording per finding. Samples failing
    with ``CXRDataError`` are skipped and counted. Runs in one process over the whole datalist (under
    ``torchrun`` call it on one rank).

    Returns ``scores`` with ``pointing_game``, ``mass_inside``, ``mask_area`` (their chance level), ``nss``,
    ``auc``, ``ncc`` (means; NaN without such truth), ``n_findings`` (finding maps scored), ``n_gaze``
    (studies scored against gaze), ``n_studies``, ``n_gaze_without_findings``, ``n_skipped``, and
    ``<score>/<finding>`` and ``n_findings/<finding>`` per finding name; and up to ``examples`` studies' maps.
    """
    names = list(dict.fromkeys(f.get("name") for item in datalist for f in item.get(FINDINGS_KEY) or ()))
    if any(not isinstance(n, str) for n in names):
        raise CXRDataError("expected every finding record to have a string name", field=FINDINGS_KEY)
    prompts = {name: positive for name, (positive, _) in finding_prompts(names, terms).items()}
    text = prompt_class_embeddings(network, tokenizer, prompts, device=device).to(device) if names else None
    row_of = {name: i for i, name in enumerate(names)}

    chain = gaze_attention_transforms(image_size, mean=mean, std=std, sigma_deg=sigma_deg,
                                      default_pixels_per_degree=default_pixels_per_degree)
    loader = DataLoader(SkipBadSamples(Dataset(list(datalist), chain)), batch_size=1, shuffle=False,
                        num_workers=num_workers, collate_fn=_only)
    finding_rows: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    gaze_rows: list[torch.Tensor] = []
    counts = {"n_studies": 0, "n_gaze_without_findings": 0, "n_skipped": 0}
    with_gaze: list[GazeAttentionExample] = []
    without_gaze: list[GazeAttentionExample] = []
    network.eval()
    for item in tqdm(loader, desc="gaze attention", disable=not progress):
        if item is None:
            counts["n_skipped"] += 1
            continue
        present = item.get(NAMES_KEY, [])
        heatmap = item.get("heatmap")
        if not present:
            counts["n_gaze_without_findings"] += heatmap is not None
            continue
        image = convert_to_tensor(item["image"], track_meta=False)[None].to(device)
        features = text[[row_of[name] for name in present]]
        maps = similarity_saliency(network, image, features, method, **saliency_kwargs)[0].cpu()  # (F, H, W)
        masks = _binary(convert_to_tensor(item[MASK_KEY], track_meta=False))
        rows = gaze_attention_scores(maps[:, None], masks[:, None], None, top_fraction)
        for name, row in zip(present, rows):
            finding_rows[name].append(row[None])
        union = _union(maps)
        gaze = None if heatmap is None else convert_to_tensor(heatmap, track_meta=False)
        gazed = torch.full((1, len(SCORE_KEYS)), math.nan, dtype=torch.float64)
        if gaze is not None:
            gazed = gaze_attention_scores(union[None], None, gaze[None], top_fraction)
            gaze_rows.append(gazed)
        counts["n_studies"] += 1
        kept = with_gaze if gaze is not None else without_gaze
        if len(kept) < examples:
            study = rows.nanmean(0)
            scores = {"pointing_game": study[0].item(), "mass_inside": study[1].item(),
                      "nss": gazed[0, 3].item(), "auc": gazed[0, 4].item()}
            kept.append(GazeAttentionExample(
                str(item.get("dicom_id", "")), image[0, 0].cpu().numpy(), union[0].numpy(),
                masks.any(0).numpy(), None if gaze is None else gaze[0].numpy(), list(present), scores))
    if counts["n_studies"] == 0:
        logger.warning("Gaze attention: no study of %d had a finding to explain (%s).", len(datalist), counts)
    every = [row for rows in finding_rows.values() for row in rows] + gaze_rows
    empty = torch.empty(0, len(SCORE_KEYS), dtype=torch.float64)
    scores: dict[str, float | int] = {**summarise_scores(torch.cat(every) if every else empty), **counts}
    for name, rows in finding_rows.items():
        part = summarise_scores(torch.cat(rows) if rows else empty)
        scores.update({f"{k}/{name}": part[k] for k in ("pointing_game", "mass_inside", "mask_area")})
        scores[f"n_findings/{name}"] = part["n_findings"]
    return GazeAttentionResult(scores, (with_gaze + without_gaze)[:examples])


def plot_gaze_attention(examples: Sequence[GazeAttentionExample], path: str | os.PathLike,
                        title: str = "where the model looks (saliency) and where radiologists looked (gaze)"
                        ) -> str:
    """One row per study: the image with its finding regions outlined, the union-of-findings saliency, and
    the gaze heatmap (or "no gaze"), each overlaid on the image and titled with that study's scores."""
    rows = max(len(examples), 1)
    figure = new_figure(9, 3.1 * rows)
    for row, example in enumerate(examples):
        panels = (("image + finding regions", None),
                  (f"saliency: pointing {example.scores['pointing_game']:.2f}, "
                   f"mass {example.scores['mass_inside']:.2f}", example.saliency),
                  (f"gaze: NSS {example.scores['nss']:.2f}, AUC {example.scores['auc']:.2f}",
                   example.heatmap))
        for col, (label, overlay) in enumerate(panels):
            axes = figure.add_subplot(rows, 3, row * 3 + col + 1)
            axes.imshow(example.image, cmap="gray")
            if overlay is not None:
                axes.imshow(overlay, cmap="jet", alpha=0.45)
            elif col == 2:
                label = "no gaze"
            if example.finding_mask.any():
                axes.contour(example.finding_mask.astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            axes.set_axis_off()
            heading = f"{example.dicom_id[:8]}: {', '.join(example.findings)}\n" if col == 0 else ""
            axes.set_title(heading + label, fontsize=8)
    figure.suptitle(title)
    return save_figure(figure, path)


def run_gaze_attention(network: nn.Module, tokenizer, dataset_dir: str | os.PathLike,
                       output_dir: str | os.PathLike, *, splits: Sequence[str] = ("test",), require: str = "both",
                       examples: int = 4, figure: bool = True, **kwargs) -> dict:
    """The bundle step: score ``network`` on the held-out studies of ``dataset_dir`` chosen by ``splits`` and
    ``require``; write ``gaze_attention.json`` (the scores) and, with ``figure``, ``gaze_attention.png`` (saliency
    beside gaze for ``examples`` studies) under ``output_dir``. ``kwargs`` go to ``evaluate_gaze_attention``."""
    datalist = gaze_attention_datalist(dataset_dir, splits=splits, require=require)
    result = evaluate_gaze_attention(network, tokenizer, datalist, examples=examples if figure else 0, **kwargs)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "gaze_attention.json").write_text(json.dumps(result.scores, indent=2) + "\n")
    if figure and result.examples:
        plot_gaze_attention(result.examples, output_dir / "gaze_attention.png")
    logger.info("gaze attention over %d studies: %s", result.scores.get("n_studies", 0),
                {k: result.scores[k] for k in ("pointing_game", "mass_inside", "nss", "auc") if k in result.scores})
    return result.scores
