"""The whole evaluation of one network: zero-shot and linear probes on the classification sets, retrieval and
embedding quality on the paired sets, written as ``metrics.json``, ``metrics.csv`` and figures.

Everything is deterministic for a given network and seed (ordered loading, seeded splits and subsets, exact
search), so evaluating one checkpoint twice gives identical files. The tables are written directly rather than
through MONAI's ``MetricsSaver``, which saves one engine's flat ``state.metrics``: here several sets and
tasks, with mean ± std per probe fraction, share one long table (dataset, task, metric, value).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eclip_monai.data.eval_sets import (
    EvalSet,
    load_chexpert_5x200,
    load_cxr14,
    load_openi,
    load_rsna_pneumonia,
)
from eclip_monai.data.mimic import Datalist, build_mimic_datalist
from eclip_monai.data.reports import DEFAULT_SECTIONS
from eclip_monai.evaluation.embed import (
    Embeddings,
    embed_dataset,
    eval_image_transforms,
    prompt_class_embeddings,
)
from eclip_monai.evaluation.figures import plot_class_similarity, plot_modality_gap, plot_retrieval_gallery
from eclip_monai.metrics.embedding_quality import cosine_similarity_matrix, embedding_quality
from eclip_monai.metrics.linear_probe import linear_probe, subsample_indices
from eclip_monai.prompts import CHEXPERT_5X200_PROMPTS, CXR14_PROMPTS, RSNA_PROMPTS, expand_prompts
from eclip_monai.metrics.retrieval import cross_modal_recall, report_group_id, topk_search, unique_by_group
from eclip_monai.metrics.zero_shot import zero_shot_classification
from eclip_monai.transforms.io import LoadCXRImage

logger = logging.getLogger(__name__)
GALLERY_QUERIES = 4


def run_evaluation(
    network: nn.Module,
    tokenizer,
    output_dir: str | os.PathLike,
    *,
    chexpert_root: str | None = None,
    rsna_root: str | None = None,
    cxr14_root: str | None = None,
    cxr14_image_list: str | None = None,
    openi_root: str | None = None,
    mimic_root: str | None = None,
    report_sections: Sequence[str] = DEFAULT_SECTIONS,
    image_size: int = 224,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    probe_fractions: Sequence[float] = (0.01, 0.1, 1.0),
    probe_seeds: Sequence[int] = (0, 1, 2),
    probe_test_fraction: float = 0.5,
    seed: int = 0,
    figures: bool = True,
    progress: bool = True,
) -> dict:
    """Evaluate ``network`` on every set whose root is given; return the results and write them under
    ``output_dir`` (``metrics.json``, ``metrics.csv``, ``figures/*.png``).

    Classification sets (CheXpert 5×200, RSNA, CXR14) get zero-shot scores with their prompt ensembles and a
    linear probe on a seeded, stratified split (``probe_test_fraction`` held out); paired sets (OpenI, the
    MIMIC-CXR test split) get cross-modal R@k and embedding quality.
    """
    output_dir = Path(output_dir)
    figure_dir = output_dir / "figures" if figures else None
    common = dict(batch_size=batch_size, num_workers=num_workers, device=device, progress=progress)
    image_chain = eval_image_transforms(image_size)
    pair_chain = eval_image_transforms(image_size, tokenizer=tokenizer)
    logit_scale = float(network.logit_scale().detach())
    classification = (
        ("chexpert_5x200", chexpert_root, load_chexpert_5x200, CHEXPERT_5X200_PROMPTS, {}),
        ("rsna_pneumonia", rsna_root, load_rsna_pneumonia, RSNA_PROMPTS, {}),
        ("cxr14", cxr14_root, load_cxr14, CXR14_PROMPTS, {"image_list": cxr14_image_list}),
    )
    results: dict[str, dict] = {}
    for name, root, load, prompts, kwargs in classification:
        if root is None:
            continue
        eval_set = load(root, **kwargs)
        embeddings = embed_dataset(network, eval_set.datalist, image_chain, desc=name, **common)
        class_features = prompt_class_embeddings(network, tokenizer, expand_prompts(prompts), device=device)
        results[name] = _classification_results(eval_set, embeddings, class_features, logit_scale,
                                                probe_fractions, probe_seeds, probe_test_fraction, seed)
        if figure_dir is not None:
            plot_class_similarity(cosine_similarity_matrix(class_features), eval_set.class_names,
                                  figure_dir / f"{name}_class_similarity.png",
                                  title=f"{name}: cosine similarity of class prompt embeddings")
    paired = (
        ("openi", openi_root, lambda: load_openi(openi_root).datalist),
        ("mimic_test", mimic_root,
         lambda: build_mimic_datalist(mimic_root, splits=["test"], sections=report_sections)),
    )
    for name, root, load in paired:
        if root is None:
            continue
        datalist = load()
        embeddings = embed_dataset(network, datalist, pair_chain, desc=name, **common)
        results[name] = _paired_results(datalist, embeddings, ks)
        if figure_dir is not None:
            _paired_figures(name, embeddings, figure_dir, max(ks))
    write_results(results, output_dir)
    return results


def _classification_results(eval_set: EvalSet, embeddings: Embeddings, class_features: torch.Tensor,
                            logit_scale: float, fractions, seeds, test_fraction: float, seed: int) -> dict:
    labels = embeddings.labels
    train = subsample_indices(labels, 1 - test_fraction, seed)
    test = np.setdiff1d(np.arange(len(labels)), train)
    return {
        "n": len(labels),
        "skipped": embeddings.skipped + sum(eval_set.datalist.skipped.values()),
        "zero_shot": zero_shot_classification(embeddings.image, class_features, labels, logit_scale),
        "linear_probe": linear_probe(embeddings.image[train], labels[train], embeddings.image[test],
                                     labels[test], fractions, seeds),
        "class_similarity": cosine_similarity_matrix(class_features).tolist(),
    }


def _groups(reports: Sequence[str]) -> torch.Tensor:
    return torch.tensor([report_group_id(r) for r in reports], dtype=torch.long)


def _paired_results(datalist: Datalist, embeddings: Embeddings, ks: Sequence[int]) -> dict:
    groups = _groups(embeddings.reports)
    return {
        "n": len(groups),
        "unique_reports": int(groups.unique().numel()),
        "skipped": embeddings.skipped + sum(datalist.skipped.values()),
        "retrieval": cross_modal_recall(embeddings.image, embeddings.text, groups, ks),
        "embedding_quality": embedding_quality(embeddings.image, embeddings.text),
    }


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


def _rows(results: Mapping[str, dict]):
    """(dataset, task, metric, value) for every number in the results (matrices stay in the JSON only)."""
    def walk(prefix: tuple[str, ...], value):
        if isinstance(value, Mapping):
            for key, child in value.items():
                yield from walk((*prefix, str(key)), child)
        elif isinstance(value, (int, float)):
            dataset, *rest = prefix
            task = rest[0] if len(rest) > 1 else ""
            yield dataset, task, "/".join(rest[1:] if len(rest) > 1 else rest), value

    for dataset, values in results.items():
        yield from walk((dataset,), values)


def write_results(results: Mapping[str, dict], output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` (nested, as returned) and ``metrics.csv`` (one number per row)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = output_dir / "metrics.json", output_dir / "metrics.csv"
    json_path.write_text(json.dumps(results, indent=2) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("dataset", "task", "metric", "value"))
        writer.writerows(_rows(results))
    logger.info("evaluation results written to %s and %s", json_path, csv_path)
    return json_path, csv_path
