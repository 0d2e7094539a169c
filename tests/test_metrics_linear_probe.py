"""Linear probe on frozen features: label fractions, seeded stratified subsets, mean ± std over seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclip_monai.metrics import linear_probe, subsample_indices


def separable(n: int, classes: int = 2, dim: int = 8, seed: int = 0, shift: float = 6.0):
    torch.manual_seed(seed)
    labels = torch.arange(n) % classes
    features = torch.randn(n, dim)
    features[:, :classes] += shift * torch.nn.functional.one_hot(labels, classes)
    return features, labels


def test_one_percent_subset_uses_one_percent_of_labels_stratified_and_seeded():
    labels = np.repeat([0, 1], 500)
    subset = subsample_indices(labels, 0.01, seed=3)
    assert len(subset) == 10 and np.bincount(labels[subset]).tolist() == [5, 5]
    assert np.array_equal(subset, subsample_indices(labels, 0.01, seed=3))
    assert not np.array_equal(subset, subsample_indices(labels, 0.01, seed=4))


def test_subset_keeps_class_shares_and_every_class():
    labels = np.array([0] * 900 + [1] * 100)
    assert np.bincount(labels[subsample_indices(labels, 0.1, seed=0)]).tolist() == [90, 10]
    rare = np.array([0] * 98 + [1, 2])
    assert set(labels_of := rare[subsample_indices(rare, 0.01, seed=0)]) == {0, 1, 2} and len(labels_of) == 3


def test_multilabel_subset_is_uniform_and_full_fraction_is_everything():
    multi_hot = np.eye(3)[np.arange(200) % 3]
    assert len(subsample_indices(multi_hot, 0.1, seed=0)) == 20
    assert np.array_equal(subsample_indices(np.arange(7) % 2, 1.0, seed=5), np.arange(7))
    with pytest.raises(ValueError, match="fraction"):
        subsample_indices(multi_hot, 0.0, seed=0)


def test_separable_features_are_probed_to_near_perfect_scores():
    train_x, train_y = separable(1000, classes=3)
    test_x, test_y = separable(300, classes=3, seed=1)
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert list(result) == ["1%", "10%", "100%"]
    assert [result[f]["n_train"] for f in result] == [10, 100, 1000]
    assert [result[f]["seeds"] for f in result] == [3, 3, 1]
    for fraction in ("10%", "100%"):
        assert result[fraction]["accuracy"]["mean"] > 0.97 and result[fraction]["auroc"]["mean"] > 0.99
    assert result["100%"]["accuracy"]["std"] == 0.0


def test_probe_is_reproducible_and_seeds_give_a_spread_on_hard_data():
    train_x, train_y = separable(400, classes=2, dim=32, shift=1.0)  # weak signal: small subsets disagree
    test_x, test_y = separable(200, classes=2, dim=32, seed=1, shift=1.0)
    first = linear_probe(train_x, train_y, test_x, test_y, fractions=(0.05,))
    assert first == linear_probe(train_x, train_y, test_x, test_y, fractions=(0.05,))
    assert first["5%"]["accuracy"]["std"] > 0


def test_multilabel_probe_thresholds_probabilities():
    torch.manual_seed(0)
    labels = (torch.rand(600, 3) > 0.5).float()
    features = torch.randn(600, 6) + 5.0 * torch.cat([labels, torch.zeros(600, 3)], 1)
    result = linear_probe(features[:400], labels[:400], features[400:], labels[400:], fractions=(1.0,))
    assert set(result["100%"]) == {"n_train", "seeds", "accuracy", "macro_f1", "auroc"}
    assert result["100%"]["auroc"]["mean"] > 0.99 and result["100%"]["macro_f1"]["mean"] > 0.95
