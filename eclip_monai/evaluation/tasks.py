"""Evaluation tasks as bundle components: each one reads its set, embeds it and scores it.

``bundle/configs/evaluate.json`` lists them under ``eval_tasks``, so a set is added, removed or given other
metrics by editing JSON. A task whose ``root`` is null is skipped (the set is not available here).

- ``ClassificationTask``: a labelled set (CheXpert 5×200, RSNA, CXR14) scored zero-shot with its prompt
  ensemble and by a linear probe on a seeded, stratified split.
- ``RetrievalTask``: a paired set (OpenI, the MIMIC-CXR test split) scored by cross-modal recall@k and the
  embedding-quality measures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eclip_monai.data.eval_sets import EvalSet
from eclip_monai.evaluation.embed import Embeddings, embed_dataset, eval_image_transforms, prompt_class_embeddings
from eclip_monai.evaluation.figures import plot_class_similarity, plot_modality_gap, plot_retrieval_gallery
from eclip_monai.metrics.embedding_quality import cosine_similarity_matrix, embedding_quality
from eclip_monai.metrics.linear_probe import linear_probe, subsample_indices
from eclip_monai.metrics.retrieval import cross_modal_recall, report_group_id, topk_search, unique_by_group
from eclip_monai.metrics.zero_shot import zero_shot_classification
from eclip_monai.prompts import PROMPT_SETS, PromptSpec, expand_prompts
from eclip_monai.transforms.io import LoadCXRImage

GALLERY_QUERIES = 4


@dataclass
class EvalContext:
    """What every task shares: the network and its tokenizer, how to embed, and where figures go."""

    network: nn.Module
    tokenizer: Callable
    image_size: int = 224
    device: torch.device | str = "cpu"
    batch_size: int = 64
    num_workers: int = 0
    progress: bool = True
    figure_dir: Path | None = None

    def embed(self, datalist: Sequence[dict], name: str, with_text: bool = False) -> Embeddings:
        chain = eval_image_transforms(self.image_size, tokenizer=self.tokenizer if with_text else None)
        return embed_dataset(self.network, datalist, chain, batch_size=self.batch_size,
                             num_workers=self.num_workers, device=self.device, desc=name, progress=self.progress)


@dataclass
class ClassificationTask:
    """Zero-shot and linear-probe classification on one labelled set.

    Args:
        name: the set's key in ``metrics.json``.
        root: the set's folder; None skips the task.
        reader: ``reader(root) -> EvalSet`` (``data.eval_sets.load_*``; a partial for extra arguments).
        prompts: a name of ``prompts.PROMPT_SETS`` or ``class -> PromptSpec`` in the set's class order.
        zero_shot, linear_probe: which scores to compute.
        probe_fractions, probe_seeds: training fractions of the probe and the seeds of each subset.
        probe_test_fraction: share of the set held out for the probe; ``seed`` draws that split.
    """

    name: str
    root: str | os.PathLike | None
    reader: Callable[[str | os.PathLike], EvalSet]
    prompts: str | Mapping[str, PromptSpec]
    zero_shot: bool = True
    linear_probe: bool = True
    probe_fractions: Sequence[float] = (0.01, 0.1, 1.0)
    probe_seeds: Sequence[int] = (0, 1, 2)
    probe_test_fraction: float = 0.5
    seed: int = 0

    def __call__(self, context: EvalContext) -> dict:
        eval_set = self.reader(self.root)
        embeddings = context.embed(eval_set.datalist, self.name)
        specs = PROMPT_SETS[self.prompts] if isinstance(self.prompts, str) else self.prompts
        class_features = prompt_class_embeddings(context.network, context.tokenizer, expand_prompts(specs),
                                                 device=context.device)
        labels = embeddings.labels
        result = {"n": len(labels), "skipped": embeddings.skipped + sum(eval_set.datalist.skipped.values()),
                  "class_similarity": cosine_similarity_matrix(class_features).tolist()}
        if self.zero_shot:
            logit_scale = float(context.network.logit_scale().detach())
            result["zero_shot"] = zero_shot_classification(embeddings.image, class_features, labels, logit_scale)
        if self.linear_probe:
            train = subsample_indices(labels, 1 - self.probe_test_fraction, self.seed)
            test = np.setdiff1d(np.arange(len(labels)), train)
            result["linear_probe"] = linear_probe(embeddings.image[train], labels[train], embeddings.image[test],
                                                  labels[test], self.probe_fractions, self.probe_seeds)
        if context.figure_dir is not None:
            plot_class_similarity(cosine_similarity_matrix(class_features), eval_set.class_names,
                                  context.figure_dir / f"{self.name}_class_similarity.png",
                                  title=f"{self.name}: cosine similarity of class prompt embeddings")
        return result


@dataclass
class RetrievalTask:
    """Image↔report retrieval and embedding quality on one paired set.

    Args:
        name: the set's key in ``metrics.json``.
        root: the set's folder; None skips the task.
        reader: ``reader(root)`` -> a datalist of ``{"image", "report"}`` items, or an ``EvalSet`` holding one.
        ks: the k of recall@k; ``embedding_quality``: whether to add modality gap, alignment and uniformity.
    """

    name: str
    root: str | os.PathLike | None
    reader: Callable[[str | os.PathLike], Sequence[dict]]
    ks: Sequence[int] = (1, 5, 10)
    embedding_quality: bool = True

    def __call__(self, context: EvalContext) -> dict:
        loaded = self.reader(self.root)
        datalist = loaded.datalist if isinstance(loaded, EvalSet) else loaded
        embeddings = context.embed(datalist, self.name, with_text=True)
        groups = _groups(embeddings.reports)
        result = {"n": len(groups), "unique_reports": int(groups.unique().numel()),
                  "skipped": embeddings.skipped + sum(getattr(datalist, "skipped", {}).values()),
                  "retrieval": cross_modal_recall(embeddings.image, embeddings.text, groups, self.ks)}
        if self.embedding_quality:
            result["embedding_quality"] = embedding_quality(embeddings.image, embeddings.text)
        if context.figure_dir is not None:
            _paired_figures(self.name, embeddings, context.figure_dir, max(self.ks))
        return result


def _groups(reports: Sequence[str]) -> torch.Tensor:
    return torch.tensor([report_group_id(r) for r in reports], dtype=torch.long)


def _paired_figures(name: str, embeddings: Embeddings, figure_dir: Path, k: int) -> None:
    plot_modality_gap(embeddings.image, embeddings.text, figure_dir / f"{name}_modality_gap.png",
                      title=f"{name}: image and report embeddings (PCA)")
    groups = _groups(embeddings.reports)
    texts, text_groups = unique_by_group(embeddings.text, groups)
    first_report: dict[int, str] = {}
    for group, report in zip(groups.tolist(), embeddings.reports):
        first_report.setdefault(group, report)
    queries = min(GALLERY_QUERIES, len(groups))
    _, idx = topk_search(embeddings.image[:queries], texts, k)
    load = LoadCXRImage()
    plot_retrieval_gallery(
        [load(p)[0].numpy() for p in embeddings.paths[:queries]],
        [[first_report[int(text_groups[j])] for j in row] for row in idx],
        [[bool(text_groups[j] == groups[q]) for j in row] for q, row in enumerate(idx)],
        figure_dir / f"{name}_retrieval_gallery.png", title=f"{name}: image → report retrieval",
    )
