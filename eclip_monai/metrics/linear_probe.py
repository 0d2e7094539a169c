"""Linear probe: logistic regression on frozen image embeddings, trained on 1 %, 10 % and 100 % of the labels.

Small label fractions are where pretraining shows; several seeded subsets give a mean ± std instead of one
lucky draw. Features are standardised first so one regularisation strength ``C`` suits any embedding scale.
Single-label subsets are stratified by class and keep at least one example of every class (a classifier
needs them all); multi-label subsets are drawn uniformly and fit one-vs-rest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from eclip_monai.metrics.classification import classification_metrics


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def subsample_indices(labels, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded ``round(fraction × N)`` subset (at least one per class for class indices).

    Stratified: within each class the samples are ranked in a random order and the subset takes the lowest
    fractional ranks across classes, so every class keeps its share; each class's first sample is forced in.
    """
    labels = _numpy(labels)
    n = len(labels)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    size = max(1, round(fraction * n))
    if labels.ndim == 2:
        return np.sort(rng.choice(n, size, replace=False))
    classes = np.unique(labels)
    size = max(size, len(classes))
    if size >= n:
        return np.arange(n)
    order = rng.permutation(n)
    rank = np.empty(n)
    for c in classes:
        members = order[labels[order] == c]
        rank[members] = (np.arange(len(members)) + 0.5) / len(members)
        rank[members[0]] = -1.0
    return np.sort(np.lexsort((rng.random(n), rank))[:size])


def _fit_predict(train_x, train_y, test_x, num_classes: int, C: float, max_iter: int) -> np.ndarray:
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    if train_y.ndim == 2:
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(classifier)).fit(train_x, train_y)
        return model.predict_proba(test_x)
    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs at least two classes among the training labels")
    model = make_pipeline(StandardScaler(), classifier).fit(train_x, train_y)
    probs = np.zeros((len(test_x), num_classes))
    probs[:, model[-1].classes_] = model.predict_proba(test_x)
    return probs


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: Sequence[int] = (0, 1, 2),
    C: float = 1.0,
    max_iter: int = 1000,
) -> dict[str, dict]:
    """Probe at each label fraction; ``result["10%"] = {"n_train", "seeds", "<metric>": {"mean", "std"}}``.

    Metrics are :func:`~eclip_monai.metrics.classification.classification_metrics` of the predicted
    probabilities (multi-label thresholded at 0.5). The full training set is one fit, not one per seed.
    """
    train_x, train_y = _numpy(train_features).astype(np.float64), _numpy(train_labels)
    test_x, test_y = _numpy(test_features).astype(np.float64), _numpy(test_labels)
    num_classes = train_y.shape[1] if train_y.ndim == 2 else int(max(train_y.max(), test_y.max())) + 1
    result = {}
    for fraction in fractions:
        runs, sizes = [], set()
        for seed in (seeds if fraction < 1 else seeds[:1]):
            idx = subsample_indices(train_y, fraction, seed)
            sizes.add(len(idx))
            probs = _fit_predict(train_x[idx], train_y[idx], test_x, num_classes, C, max_iter)
            runs.append(classification_metrics(test_y, probs, threshold=0.5))
        summary = {"n_train": max(sizes), "seeds": len(runs)}
        for key in runs[0]:
            values = np.array([r[key] for r in runs])
            summary[key] = {"mean": float(values.mean()), "std": float(values.std())}
        result[f"{fraction * 100:g}%"] = summary
    return result
