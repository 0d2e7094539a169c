"""Accuracy, macro-F1 and AUROC from class scores, shared by zero-shot classification and linear probes.

Single-label: ``labels`` (N,) class indices and ``scores`` (N, C) probabilities; AUROC is one-vs-rest,
macro-averaged over the classes that occur both as positive and negative (scikit-learn's ``ovr`` macro when
all occur). Multi-label: ``labels`` (N, C) multi-hot and ``scores`` (N, C) per-class scores; AUROC is the
macro mean over classes with both values present; accuracy (mean per label) and macro-F1 need a decision
``threshold`` on the scores and are left out without one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def macro_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mean one-vs-rest AUROC over the columns of binary (N, C) ``targets`` holding both 0 and 1, else NaN."""
    aucs = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])
            if 0 < targets[:, c].sum() < len(targets)]
    return float(np.mean(aucs)) if aucs else math.nan


def classification_metrics(labels, scores, threshold: float | None = None) -> dict[str, float]:
    """``accuracy``, ``macro_f1`` and ``auroc`` of ``scores`` for ``labels`` (see the module docstring)."""
    labels, scores = _numpy(labels), _numpy(scores).astype(np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, C), got shape {scores.shape}")
    if labels.ndim == 1:
        classes = np.arange(scores.shape[1])
        predicted = scores.argmax(1)
        targets = (labels[:, None] == classes[None]).astype(int)
        return {
            "accuracy": float(accuracy_score(labels, predicted)),
            "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
            "auroc": macro_auroc(targets, scores),
        }
    targets = labels.astype(int)
    result = {"auroc": macro_auroc(targets, scores)}
    if threshold is not None:
        predicted = (scores >= threshold).astype(int)
        result["accuracy"] = float((predicted == targets).mean())
        result["macro_f1"] = float(f1_score(targets, predicted, average="macro", zero_division=0))
    return result
