"""Zero-shot classification, its prompt sets and the shared accuracy / macro-F1 / AUROC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from eclip_monai.data.eval_sets import RSNA_CLASSES
from eclip_monai.data.formats import CHEXPERT_5X200_CLASSES, CXR14_CLASSES
from eclip_monai.metrics import (
    classification_metrics,
    zero_shot_classification,
    zero_shot_scores,
)
from eclip_monai.networks.zero_shot import class_embeddings
from eclip_monai.prompts import CHEXPERT_5X200_PROMPTS, CXR14_PROMPTS, RSNA_PROMPTS, PromptSpec, expand_prompts


def clusters(n_per_class: int = 20, classes: int = 4, dim: int = 16, noise: float = 0.3, seed: int = 0):
    """Image features scattered around one random unit centroid per class."""
    torch.manual_seed(seed)
    centroids = F.normalize(torch.randn(classes, dim), dim=-1)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    features = F.normalize(centroids[labels] + noise * torch.randn(len(labels), dim) / math.sqrt(dim), dim=-1)
    return features, labels, centroids


def test_class_embedding_is_the_renormalised_mean_of_normalised_prompts():
    prompts = [torch.tensor([[2.0, 0.0], [0.0, 5.0]]), torch.tensor([[0.0, -3.0]])]
    expected = torch.tensor([[1.0, 1.0], [0.0, -1.0]]) / torch.tensor([[math.sqrt(2)], [1.0]])
    torch.testing.assert_close(class_embeddings(prompts), expected)


def test_class_text_embeddings_at_the_class_centroids_classify_every_image_correctly():
    features, labels, _ = clusters()
    centroids = torch.stack([features[labels == c].mean(0) for c in range(4)])
    result = zero_shot_classification(features, class_embeddings([c[None] for c in centroids]), labels)
    assert result == {"accuracy": 1.0, "macro_f1": 1.0, "auroc": 1.0}


def test_mismatched_class_embeddings_score_at_chance():
    features, labels, centroids = clusters(n_per_class=200, noise=0.5)
    result = zero_shot_classification(features, centroids.roll(1, 0), labels)
    assert result["accuracy"] == 0.0 and result["auroc"] < 0.5


def test_single_label_scores_are_a_softmax_at_the_logit_scale():
    features, _, centroids = clusters(n_per_class=3)
    scores = zero_shot_scores(features, centroids, logit_scale=10.0)
    torch.testing.assert_close(scores, (10.0 * features @ centroids.T).softmax(-1))
    torch.testing.assert_close(scores.sum(-1), torch.ones(len(features)))


def test_multilabel_zero_shot_reports_auroc_only_from_raw_similarities():
    features, labels, centroids = clusters(classes=3)
    multi_hot = F.one_hot(labels, 3).float()
    result = zero_shot_classification(features, centroids, multi_hot)
    assert set(result) == {"auroc"} and result["auroc"] > 0.95


def test_auroc_matches_sklearn_one_vs_rest_macro_and_skips_absent_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 300)
    probs = rng.dirichlet(np.ones(4), 300) + 0.3 * np.eye(4)[labels]
    probs /= probs.sum(1, keepdims=True)
    ours = classification_metrics(labels, probs)
    assert ours["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    present = labels != 3  # class 3 never occurs: its AUROC is undefined and left out of the mean
    expected = np.mean([roc_auc_score(labels[present] == c, probs[present, c]) for c in range(3)])
    assert classification_metrics(labels[present], probs[present])["auroc"] == pytest.approx(expected)


def test_hand_computed_accuracy_and_macro_f1():
    labels = np.array([0, 0, 1, 1])
    scores = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]])  # one class-0 image called 1
    result = classification_metrics(labels, scores)
    # class 0: P=1, R=1/2 -> F1 2/3; class 1: P=2/3, R=1 -> F1 4/5
    assert result["accuracy"] == 0.75
    assert result["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert result["auroc"] == 1.0  # 0.6 for the misclassified one still ranks below 0.7 and 0.8


def test_prompt_sets_cover_each_evaluation_set_in_label_order():
    assert tuple(CHEXPERT_5X200_PROMPTS) == CHEXPERT_5X200_CLASSES
    assert tuple(RSNA_PROMPTS) == RSNA_CLASSES
    assert tuple(CXR14_PROMPTS) == CXR14_CLASSES
    assert all(len(p) == 1 for p in expand_prompts(CXR14_PROMPTS).values())
    for name, prompts in expand_prompts(CHEXPERT_5X200_PROMPTS).items():
        spec = CHEXPERT_5X200_PROMPTS[name]
        assert len(prompts) == len(spec.severity) * len(spec.subtype) * len(spec.finding) * len(spec.location)
        assert all(p == " ".join(p.split()) and any(f in p for f in spec.finding) for p in prompts)


def test_prompt_spec_expands_every_combination_in_order():
    spec = PromptSpec(finding=("effusion",), severity=("", "small"), location=("", "on the left"))
    expected = ["effusion", "effusion on the left", "small effusion", "small effusion on the left"]
    assert spec.expand() == expected
