"""Modality gap, alignment, uniformity and the class-similarity matrix against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eclip_monai.metrics import (
    EmbeddingQuality,
    alignment,
    cosine_similarity_matrix,
    embedding_quality,
    modality_gap,
    uniformity,
)


def test_perfect_embeddings_have_no_gap_and_perfect_alignment():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(50, 8), dim=-1)
    scores = embedding_quality(features, features.clone())
    assert scores["modality_gap"] == pytest.approx(0.0, abs=1e-12)
    assert scores["alignment"] == pytest.approx(0.0, abs=1e-12)
    assert scores["uniformity_image"] == pytest.approx(scores["uniformity_text"])


def test_two_antipodal_points_have_uniformity_minus_eight():
    assert uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(math.log(math.exp(-2 * 4)))


def test_uniformity_of_three_points_by_hand():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # squared distances 2, 4, 2
    expected = math.log((2 * math.exp(-4) + math.exp(-8)) / 3)
    assert uniformity(points) == pytest.approx(expected)
    assert math.isnan(uniformity(points[:1]))


def test_blockwise_uniformity_equals_the_direct_formula():
    torch.manual_seed(1)
    x = F.normalize(torch.randn(300, 5, dtype=torch.float64), dim=-1)
    sq = (x[:, None] - x[None]).pow(2).sum(-1)
    i, j = torch.triu_indices(300, 300, offset=1)
    direct = torch.exp(-2 * sq[i, j]).mean().log().item()
    assert uniformity(x, block=1000) == pytest.approx(direct, abs=1e-9)  # 3 rows per block
    assert uniformity(x) == pytest.approx(direct, abs=1e-9)  # one block


def test_orthogonal_modalities_give_gap_sqrt2_and_alignment_2():
    image = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    text = torch.tensor([[0.0, 3.0, 0.0]]).repeat(4, 1)  # scale does not matter: embeddings are normalised
    assert modality_gap(image, text) == pytest.approx(math.sqrt(2))
    assert alignment(image, text) == pytest.approx(2.0)
    assert alignment(image, -text[:, [1, 0, 2]]) == pytest.approx(4.0)  # antipodal pairs


def test_joint_uniformity_sees_the_gap_that_per_modality_uniformity_misses():
    torch.manual_seed(2)
    image = F.normalize(torch.randn(100, 8) + torch.tensor([3.0] + [0.0] * 7), dim=-1)
    text = F.normalize(torch.randn(100, 8) - torch.tensor([3.0] + [0.0] * 7), dim=-1)
    scores = embedding_quality(image, text)
    assert scores["modality_gap"] > 1.0
    mixed = embedding_quality(image, torch.cat([image[50:], text[:50]]))
    assert mixed["modality_gap"] < scores["modality_gap"]
    assert scores["uniformity_joint"] < max(scores["uniformity_image"], scores["uniformity_text"])


def test_class_similarity_matrix_by_hand():
    classes = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    expected = torch.tensor([[1.0, 1 / math.sqrt(2), 0.0], [1 / math.sqrt(2), 1.0, -1 / math.sqrt(2)],
                             [0.0, -1 / math.sqrt(2), 1.0]], dtype=torch.float64)
    torch.testing.assert_close(cosine_similarity_matrix(classes), expected)


def test_ignite_metric_accumulates_batches_like_the_function():
    torch.manual_seed(3)
    image, text = torch.randn(30, 6), torch.randn(30, 6)
    metric = EmbeddingQuality(metric=None)
    for start in range(0, 30, 8):
        metric.update((image[start : start + 8], text[start : start + 8]))
    assert metric.compute() == pytest.approx(embedding_quality(image, text))
    with pytest.raises(ValueError, match="metric must be one of"):
        EmbeddingQuality(metric="gap")
