"""Gaze-steered similar-case search, measured: does a reader's gaze, through the heatmap processor, bring back
studies with the finding the reader was looking at?

Queries are the test-split frontal images of a phantom world that have a held-out reading (REFLACX-format gaze)
and at least one finding; the gallery is the train split's frontal images (the archive a hospital searches).
Each query image is asked three ways, the same image every time:

* **no gaze** — its plain embedding (``ECLIP.encode_image``), today's search;
* **gaze** — the embedding of the expert image HP(I, H) built from the reader's true fixations
  (``ECLIP.encode_expert_image``), what ``eclip_similar`` does with ``fixations``;
* **random fixations** — the same number of fixations with the same durations, placed uniformly on the shown
  image: the negative control that separates "the reader's gaze helps" from "any heatmap changes the query".

Endpoint: finding-match precision@k, the share of the k nearest gallery images (cosine) that have at least one
of the query's findings; ``chance`` is that share over the whole gallery. Arms are compared per query (paired
differences with a t interval over queries, ``evaluation.paired``). Reading, fixed before the first measurement:
the reader's gaze steers the search usefully when the 95 % intervals of both gaze − no gaze and gaze − random
fixations lie above 0; an interval that crosses 0 is "no effect shown", one below 0 says the gaze hurts. The
measurement of record uses the study's seed-0 eCLIP checkpoint, its data world and k = 10, control seed 0.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from eclip_monai.evaluation.embed import embed_dataset, eval_image_transforms
from eclip_monai.evaluation.gaze_attention import FINDINGS_KEY
from eclip_monai.evaluation.paired import paired_difference
from eclip_monai.networks.eclip import ECLIP

ARMS = ("no_gaze", "gaze", "random_fixations")
CONTRASTS = (("gaze", "no_gaze"), ("gaze", "random_fixations"))

__all__ = ["ARMS", "CONTRASTS", "finding_names", "gaze_search_precision", "random_fixations"]


def finding_names(item: dict) -> frozenset[str]:
    return frozenset(f["name"] for f in item.get(FINDINGS_KEY) or [])


def random_fixations(fixations: np.ndarray, shape: tuple[int, int], rng: np.random.Generator,
                     shown_region: Sequence[float] | None = None) -> np.ndarray:
    """Fixations with the durations of ``fixations`` at uniform positions on the shown region (or the
    ``(rows, cols)`` image)."""
    fixations = np.asarray(fixations, dtype=np.float64)
    xmin, ymin, xmax, ymax = shown_region if shown_region is not None else (0, 0, shape[1] - 1, shape[0] - 1)
    x = rng.uniform(xmin, xmax, len(fixations))
    y = rng.uniform(ymin, ymax, len(fixations))
    return np.stack([x, y, fixations[:, 2]], axis=1)


class _Primed(nn.Module):
    """``encode_image`` of HP(I, 1): an image seen through the heatmap processor with a uniform heatmap."""

    def __init__(self, network: ECLIP):
        super().__init__()
        self.network = network

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.network.encode_image(self.network.prime(image))


@torch.no_grad()
def gaze_search_precision(network: ECLIP, queries: Sequence[dict], gallery: Sequence[dict], image_size: int,
                          *, k: int = 10, seed: int = 0, mix: float = 0.0, primed: bool = False,
                          batch_size: int = 32,
                          device: str = "cpu", progress: bool = True) -> dict:
    """Finding-match precision@k of the three query arms (see the module docstring).

    Args:
        network: a trained eCLIP (with its heatmap processor).
        queries: datalist items with ``image``, ``fixations`` (original pixels), ``pixels_per_degree``,
            optional ``shown_region`` and the phantom ``findings`` (e.g. ``gaze_attention_datalist(...,
            require="both")``).
        gallery: datalist items with ``image`` and ``findings``.
        mix: the gaze arms' query is the embedding of ``mix·I + (1 − mix)·HP(I, H)``; 0 (the default, what the
            app serves) is the expert image alone, 0.5 the mean of training's mixup.
        primed: embed the gallery and the no-gaze query through the processor with a uniform heatmap,
            HP(I, 1) (what the priming loss pulls towards I), so all three arms live in the processor's output
            space and only the heatmap differs between them.
    """
    if not network.has_experts:
        raise ValueError("gaze-steered search needs an eCLIP network with a heatmap processor")
    queries = [q for q in queries if finding_names(q) and q.get("fixations") is not None]
    if not queries:
        raise ValueError("no query has both fixations and findings")
    network = network.to(device).eval()
    found = embed_dataset(_Primed(network) if primed else network, [{"image": g["image"]} for g in gallery],
                          eval_image_transforms(image_size),
                          batch_size=batch_size, device=device, desc="gallery", progress=progress)
    names_of = {g["image"]: finding_names(g) for g in gallery}
    gallery_names = [names_of[p] for p in found.paths]
    gallery_features = found.image.float().to(device)

    transform = eval_image_transforms(image_size, with_heatmap=True)
    rng = np.random.default_rng(seed)
    precision = {arm: [] for arm in ARMS}
    chance = []
    for start in tqdm(range(0, len(queries), batch_size), desc="queries", disable=not progress):
        batch = queries[start:start + batch_size]
        true_items, random_items = [], []
        for query in batch:
            item = transform(copy.deepcopy(query))
            shape = tuple(int(s) for s in item["image"].meta["spatial_shape"])
            control = dict(query, fixations=random_fixations(query["fixations"], shape, rng,
                                                             query.get("shown_region")))
            true_items.append(item)
            random_items.append(transform(control))
        image = torch.stack([i["image"].as_tensor() for i in true_items]).to(device)
        heat = torch.stack([i["heatmap"].as_tensor() for i in true_items]).to(device)
        heat_random = torch.stack([i["heatmap"].as_tensor() for i in random_items]).to(device)
        def steered(heatmap: torch.Tensor) -> torch.Tensor:
            if mix == 0:
                return network.encode_expert_image(image, heatmap)
            return network.encode_image(mix * image + (1 - mix) * network.heatmap_processor(image, heatmap))

        plain = network.encode_image(network.prime(image) if primed else image)
        features = {"no_gaze": plain, "gaze": steered(heat),
                    "random_fixations": steered(heat_random)}
        for arm, query_features in features.items():
            top = (query_features.float() @ gallery_features.T).topk(min(k, len(gallery_names)), dim=1).indices
            for query, rows in zip(batch, top.tolist()):
                wanted = finding_names(query)
                precision[arm].append(float(np.mean([bool(gallery_names[r] & wanted) for r in rows])))
        chance += [float(np.mean([bool(n & finding_names(q)) for n in gallery_names])) for q in batch]
    return {
        "k": k, "queries": len(queries), "gallery": len(gallery_names), "seed": seed, "mix": mix, "primed": primed,
        "chance": float(np.mean(chance)),
        "precision": {arm: float(np.mean(values)) for arm, values in precision.items()},
        "contrasts": {f"{a} - {b}": paired_difference(precision[a], precision[b]).as_dict() | {"diffs": None}
                      for a, b in CONTRASTS},
    }
