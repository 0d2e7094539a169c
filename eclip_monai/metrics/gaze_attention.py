"""Gaze attention: where an image–text model looks when it matches a finding prompt, scored against truth.

The score explained is the cosine similarity between an image's embedding and a finding prompt's text
embedding. :class:`PromptSimilarity` turns the network into an image → (B, P) "classifier" over P prompts, so
MONAI's explainers apply unchanged: ``OcclusionSensitivity`` (any tower, CNN or ViT: it only runs the model)
or ``GradCAM`` (a convolutional layer's activations weighted by their gradients; CNN towers only).

The saliency map S of one image is then scored two ways:

* against the finding's truth region (a boolean mask, e.g. the phantom's ellipses via :func:`ellipse_mask`):
  **pointing game**, whether the maximum of S lies in the region (ties are shared, so a constant map scores
  the region's area share, i.e. chance, rather than 0 or 1), and **mass inside**, the share of the positive
  saliency max(S, 0) that falls in the region (a map with no positive saliency counts as uniform). Both are
  read beside **mask area**, the region's share of the image, which is what a map that ignores the image
  would get on either score.
* against a radiologist's gaze heatmap G (fixation density, DESIGN §7): **NSS**, normalised scanpath
  saliency, here the G-weighted mean of the z-scored map, Σ z(S)·G / Σ G with z over the image's pixels
  (0 for a constant map, > 0 when S is high where the reader looked); **AUC**, S as a score separating the
  gaze-positive pixels (G in its top ``top_fraction`` = 20 % of pixels, and > 0) from the rest (0.5 for
  a constant map, 1 when S ranks every gazed pixel first); and **NCC**, the Pearson correlation of S and G
  (0 for a constant map).

Each score is NaN for an image without that truth (an empty mask, an all-zero heatmap), and the Ignite
metric :class:`GazeAttention` averages each over the images that have it.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from monai.utils import convert_to_tensor
from monai.visualize import GradCAM, OcclusionSensitivity
from sklearn.metrics import roc_auc_score
from torch import nn

from eclip_monai.metrics.gathered import GatheredMetric

SALIENCY_METHODS = ("occlusion", "gradcam")
SCORE_KEYS = ("pointing_game", "mass_inside", "mask_area", "nss", "auc", "ncc")
GAZE_TOP_FRACTION = 0.2


class PromptSimilarity(nn.Module):
    """Image (B, C, H, W) → (B, P) cosine similarities to P prompt embeddings, for explainers that expect
    a classifier's logits. ``network`` needs ``encode_image``; its features are (re)normalised here."""

    def __init__(self, network: nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.network = network
        text = text_features.detach().float().reshape(-1, text_features.shape[-1])
        self.register_buffer("text_features", F.normalize(text, dim=-1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = F.normalize(self.network.encode_image(image).float(), dim=-1)
        return features @ self.text_features.T


def similarity_saliency(
    network: nn.Module,
    image: torch.Tensor,
    text_features: torch.Tensor,
    method: str = "occlusion",
    *,
    mask_size: int = 16,
    overlap: float = 0.5,
    occlusion: str | float = "mean_img",
    n_batch: int = 64,
    target_layer: str | None = None,
) -> torch.Tensor:
    """(B, P, H, W) saliency of cosine(image, prompt) for each image and each of the P prompts
    (``text_features`` (D,) gives P = 1), at the image's size; larger means more important.

    Args:
        network: an ``ECLIP`` (or anything with ``encode_image``), used in eval mode.
        image: (B, C, H, W), normalised as for the network.
        text_features: (D,) or (P, D) prompt embeddings, e.g. a finding's prompt-ensemble class embedding.
        method: ``"occlusion"``: the drop in similarity when a ``mask_size`` square around the pixel is
            replaced (``occlusion``: ``"mean_img"`` the image's mean, ``"mean_patch"``, ``"gaussian"`` or a
            value), averaged over the windows that cover it; windows step by ``mask_size·(1 − overlap)`` and
            ``n_batch`` occluded copies run per forward pass. One pass over all windows serves every prompt.
            ``"gradcam"``: ReLU of the gradient-weighted activations of ``target_layer`` (a name in
            ``PromptSimilarity``, e.g. ``"network.clip.visual.trunk.layer4"``; by default the last feature
            stage of a timm CNN trunk), bilinearly upsampled; one backward pass per prompt (the network's
            ``.grad`` fields are cleared afterwards).

    The network's train/eval flags and hooks are as before when this returns.
    """
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method must be one of {SALIENCY_METHODS}, got {method!r}")
    image = convert_to_tensor(image, track_meta=False)
    if image.ndim != 4:
        raise ValueError(f"expected an image batch (B, C, H, W), got shape {tuple(image.shape)}")
    model = PromptSimilarity(network, text_features.to(image.device))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        if method == "gradcam":
            return _gradcam(model, image, target_layer or _default_cam_layer(network))
        return _occlusion(model, image, mask_size, overlap, occlusion, n_batch)
    finally:  # MONAI's explainers restore the wrapper's mode, not each layer's own
        for module, training in modes:
            module.training = training


def _occlusion(model: PromptSimilarity, image: torch.Tensor, mask_size: int, overlap: float,
               occlusion: str | float, n_batch: int) -> torch.Tensor:
    explainer = OcclusionSensitivity(model, mask_size=mask_size, n_batch=n_batch, verbose=False,
                                     mode=occlusion, overlap=overlap, activate=False)
    maps = []
    with torch.no_grad(), warnings.catch_warnings():
        # MONAI's occlusion predictor indexes with a list of slices, which torch deprecates; harmless here
        warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
        for one in image.split(1):
            occluded, _ = explainer(one)  # (1, P, H, W): the similarity with each window occluded
            maps.append(model(one)[:, :, None, None] - convert_to_tensor(occluded, track_meta=False))
    return torch.cat(maps).float()


def _default_cam_layer(network: nn.Module) -> str:
    trunk = getattr(getattr(getattr(network, "clip", None), "visual", None), "trunk", None)
    info = getattr(trunk, "feature_info", None)
    if info is None:
        raise ValueError("gradcam needs target_layer (a convolutional layer's name in PromptSimilarity, "
                         "e.g. 'network.clip.visual.trunk.layer4'); no timm CNN trunk was found to pick one")
    return f"network.clip.visual.trunk.{info[-1]['module']}"


@contextlib.contextmanager
def _own_hooks(model: nn.Module) -> Iterator[None]:
    """Remove the hooks MONAI's ``ModelWithHooks`` registers (it keeps no handles) and undo its ``inplace``
    switch, so explaining a network leaves it as it was."""
    modules = list(model.modules())
    before = [(set(m._forward_hooks), set(m._backward_hooks), m.__dict__.get("inplace")) for m in modules]
    try:
        yield
    finally:
        for module, (forward, backward, inplace) in zip(modules, before):
            for hooks, kept in ((module._forward_hooks, forward), (module._backward_hooks, backward)):
                for key in set(hooks) - kept:
                    del hooks[key]
            if inplace is not None:
                module.__dict__["inplace"] = inplace


def _gradcam(model: PromptSimilarity, image: torch.Tensor, layer: str) -> torch.Tensor:
    if layer not in dict(model.named_modules()):
        raise ValueError(f"target_layer {layer!r} is not a module of PromptSimilarity(network); "
                         "names start with 'network.'")
    maps = []
    with _own_hooks(model), torch.enable_grad():
        cam = GradCAM(model, target_layers=layer)
        x = image.detach().requires_grad_(True)  # gradients flow even through frozen towers
        for prompt in range(model.text_features.shape[0]):
            acti = cam.compute_map(x, class_idx=prompt)
            if acti.ndim != 4:
                raise ValueError(f"gradcam needs a convolutional layer with (B, C, h, w) output; {layer!r} "
                                 f"gave shape {tuple(acti.shape)}")
            # raw maps, upsampled: MONAI's default post-processing would rescale each one to max → 0
            maps.append(cam.upsampler(x.shape[2:])(acti).detach())
        model.zero_grad(set_to_none=True)
    return torch.cat(maps, dim=1).float()


def ellipse_mask(x: float, y: float, rx: float, ry: float, shape: tuple[int, int], angle: float = 0.0
                 ) -> np.ndarray:
    """Boolean (H, W) mask of an ellipse centred at (x = column, y = row), semi-axes ``rx`` (along the
    rotated x axis) and ``ry``, ``angle`` radians clockwise on screen (the phantom's convention); pixel
    centres at integer coordinates. Only the ellipse's bounding box is evaluated."""
    height, width = (int(s) for s in shape)
    mask = np.zeros((height, width), dtype=bool)
    if not (rx > 0 and ry > 0):
        return mask
    reach = max(rx, ry) + 1
    r0, r1 = max(int(math.floor(y - reach)), 0), min(int(math.ceil(y + reach)) + 1, height)
    c0, c1 = max(int(math.floor(x - reach)), 0), min(int(math.ceil(x + reach)) + 1, width)
    if r0 >= r1 or c0 >= c1:
        return mask
    dx = np.arange(c0, c1, dtype=np.float64)[None] - x
    dy = np.arange(r0, r1, dtype=np.float64)[:, None] - y
    if angle:
        dx, dy = dx * math.cos(angle) + dy * math.sin(angle), dy * math.cos(angle) - dx * math.sin(angle)
    mask[r0:r1, c0:c1] = (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0
    return mask


def _flat(maps, name: str) -> torch.Tensor:
    """(B, H·W) float64 rows of a (B, 1, H, W) or (B, H, W) batch of maps."""
    maps = convert_to_tensor(maps, track_meta=False).detach()
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.ndim != 3:
        raise ValueError(f"expected {name} of shape (B, 1, H, W) or (B, H, W), got {tuple(maps.shape)}")
    return maps.reshape(maps.shape[0], -1).double()


def _pair(saliency, truth, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    s, t = (convert_to_tensor(x, track_meta=False) for x in (saliency, truth))
    if s.shape[:1] + s.shape[-2:] != t.shape[:1] + t.shape[-2:]:
        raise ValueError(f"expected {name} with the saliency's batch and spatial size (B, ..., H, W) = "
                         f"{tuple(s.shape)}, got {tuple(t.shape)}")
    s = _flat(s, "saliency")
    return s, _flat(t, name).to(s.device)


def pointing_game(saliency, mask) -> torch.Tensor:
    """(B,) share of the maximal pixels of S that lie in the mask (1 or 0 unless S ties); NaN without mask."""
    s, m = _pair(saliency, mask, "mask")
    m = m > 0
    peak = s == s.amax(dim=1, keepdim=True)
    hit = (peak & m).sum(1).double() / peak.sum(1)
    return hit.masked_fill(~m.any(1), math.nan)


def mass_inside(saliency, mask) -> torch.Tensor:
    """(B,) share of max(S, 0) inside the mask (S without positive values counts as uniform); NaN without
    mask."""
    s, m = _pair(saliency, mask, "mask")
    m = m > 0
    positive = s.clamp_min(0)
    total = positive.sum(1)
    share = (positive * m).sum(1) / total.clamp_min(torch.finfo(s.dtype).tiny)
    share = torch.where(total > 0, share, m.double().mean(1))
    return share.masked_fill(~m.any(1), math.nan)


def mask_area(mask) -> torch.Tensor:
    """(B,) the mask's share of the image: chance level of both pointing game and mass inside; NaN if
    empty."""
    m = _flat(mask, "mask") > 0
    return m.double().mean(1).masked_fill(~m.any(1), math.nan)


def _zscore(s: torch.Tensor) -> torch.Tensor:
    std = s.std(1, unbiased=False, keepdim=True)
    return torch.where(std > 0, (s - s.mean(1, keepdim=True)) / std.clamp_min(1e-300), torch.zeros_like(s))


def nss(saliency, gaze) -> torch.Tensor:
    """(B,) Σ z(S)·G / Σ G with z the per-image z-score (0 for constant S); NaN where G has no mass."""
    s, g = _pair(saliency, gaze, "gaze")
    g = g.clamp_min(0)
    mass = g.sum(1)
    return ((_zscore(s) * g).sum(1) / mass.clamp_min(1e-300)).masked_fill(~(mass > 0), math.nan)


def ncc(saliency, gaze) -> torch.Tensor:
    """(B,) Pearson correlation of S and G over pixels (0 when either is constant); NaN where G has no
    mass."""
    s, g = _pair(saliency, gaze, "gaze")
    g = g.clamp_min(0)
    return (_zscore(s) * _zscore(g)).mean(1).masked_fill(~(g.sum(1) > 0), math.nan)


def _check_fraction(top_fraction: float) -> None:
    if not 0 < top_fraction < 1:
        raise ValueError(f"top_fraction must be in (0, 1), got {top_fraction}")


def gaze_positive(gaze, top_fraction: float = GAZE_TOP_FRACTION) -> torch.Tensor:
    """(B, H·W) bool: pixels with G > 0 whose G is at least the (1 − ``top_fraction``) quantile of the
    image's G, i.e. the most-looked-at ``top_fraction`` of pixels (fewer when less of the image was seen)."""
    _check_fraction(top_fraction)
    g = _flat(gaze, "gaze")
    threshold = torch.quantile(g, 1 - top_fraction, dim=1, keepdim=True)
    return (g >= threshold) & (g > 0)


def gaze_auc(saliency, gaze, top_fraction: float = GAZE_TOP_FRACTION) -> torch.Tensor:
    """(B,) ROC AUC of S separating :func:`gaze_positive` pixels from the rest (ties count half, so a
    constant S gets 0.5); NaN where either class is empty."""
    s, _ = _pair(saliency, gaze, "gaze")
    labels = gaze_positive(gaze, top_fraction).cpu().numpy()
    scores = s.cpu().numpy()
    out = torch.full((s.shape[0],), math.nan, dtype=torch.float64)
    for i, (label, score) in enumerate(zip(labels, scores)):
        if 0 < label.sum() < label.size:
            out[i] = roc_auc_score(label, score)
    return out.to(s.device)


def gaze_attention_scores(saliency, finding_mask=None, gaze=None, top_fraction: float = GAZE_TOP_FRACTION
                          ) -> torch.Tensor:
    """(B, 6) per-image scores in ``SCORE_KEYS`` order; the finding columns are NaN where ``finding_mask``
    is None or empty, the gaze columns where ``gaze`` is None or all zero."""
    s = _flat(saliency, "saliency")
    rows = torch.full((s.shape[0], len(SCORE_KEYS)), math.nan, dtype=torch.float64)
    if finding_mask is not None:
        rows[:, 0] = pointing_game(saliency, finding_mask).cpu()
        rows[:, 1] = mass_inside(saliency, finding_mask).cpu()
        rows[:, 2] = mask_area(finding_mask).cpu()
    if gaze is not None:
        rows[:, 3] = nss(saliency, gaze).cpu()
        rows[:, 4] = gaze_auc(saliency, gaze, top_fraction).cpu()
        rows[:, 5] = ncc(saliency, gaze).cpu()
    return rows


def summarise_scores(rows: torch.Tensor) -> dict[str, float | int]:
    """Means over the images that have each score, plus ``n_findings`` (images scored against a finding
    mask) and ``n_gaze`` (against a heatmap)."""
    rows = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, len(SCORE_KEYS))
    valid = ~torch.isnan(rows)
    counts = valid.sum(0)
    means = torch.where(valid, rows, torch.zeros_like(rows)).sum(0) / counts.clamp_min(1)
    out: dict[str, float | int] = {k: (means[i].item() if counts[i] else math.nan) for i, k in
                                   enumerate(SCORE_KEYS)}
    out["n_findings"] = int(counts[0])
    out["n_gaze"] = int(counts[3])
    return out


class GazeAttention(GatheredMetric):
    """Ignite metric: mean gaze-attention scores (see the module docstring) over the images seen.

    Expects the engine output (after ``output_transform``) to be ``(saliency, finding_mask, gaze_heatmap)``,
    each (B, 1, H, W) or (B, H, W); ``finding_mask`` or ``gaze_heatmap`` may be None, and a sample whose
    mask is empty or whose heatmap is all zero is left out of those scores. Only the per-image scores are
    kept (never the maps), gathered across ranks under DDP.

    ``compute`` returns ``pointing_game``, ``mass_inside``, ``mask_area`` (chance level of both), ``nss``,
    ``auc``, ``ncc`` (NaN when no image had that truth), ``n_findings`` and ``n_gaze``; or the one value
    named by ``metric``.
    """

    def __init__(self, metric: str | None = None, top_fraction: float = GAZE_TOP_FRACTION,
                 output_transform=lambda x: x, device="cpu"):
        if metric is not None and metric not in (*SCORE_KEYS, "n_findings", "n_gaze"):
            raise ValueError(f"metric must be one of {SCORE_KEYS + ('n_findings', 'n_gaze')} or None, "
                             f"got {metric!r}")
        _check_fraction(top_fraction)
        self.metric, self.top_fraction = metric, top_fraction
        super().__init__(output_transform=output_transform, device=device)

    def update(self, output) -> None:
        saliency, finding_mask, gaze = output
        super().update((gaze_attention_scores(saliency, finding_mask, gaze, self.top_fraction),))

    def compute(self) -> float | dict[str, float | int]:
        result = summarise_scores(self.gathered()[0])
        return result if self.metric is None else result[self.metric]
