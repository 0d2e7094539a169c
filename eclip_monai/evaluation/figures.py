"""Evaluation figures: the modality gap in 2-D, the class-similarity heatmap and a retrieval gallery.

matplotlib's object API on the Agg canvas (no pyplot state), so figures can be written headless and from
any thread. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.decomposition import PCA


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, bbox_inches="tight")
    return path


def plot_modality_gap(image_features: torch.Tensor, text_features: torch.Tensor, path: str | os.PathLike,
                      pairs: int = 30, title: str = "image and text embeddings (PCA)") -> str:
    """Both modalities projected on the first two principal components of their union, the first ``pairs``
    image-report pairs joined by lines and both centroids marked: the gap is the distance between them."""
    image, text = (F.normalize(x.detach().double(), dim=-1).numpy() for x in (image_features, text_features))
    projected = PCA(n_components=2).fit_transform(np.concatenate([image, text]))
    image2d, text2d = projected[: len(image)], projected[len(image) :]
    figure = new_figure(6, 5.5)
    axes = figure.add_subplot()
    for a, b in zip(image2d[:pairs], text2d[:pairs]):
        axes.plot([a[0], b[0]], [a[1], b[1]], color="0.7", linewidth=0.6, zorder=1)
    axes.scatter(*image2d.T, s=12, color="tab:blue", label="image", zorder=2)
    axes.scatter(*text2d.T, s=12, color="tab:orange", label="text", zorder=2)
    for points, color in ((image2d, "tab:blue"), (text2d, "tab:orange")):
        axes.scatter(*points.mean(0), s=160, marker="X", color=color, edgecolors="black", zorder=3)
    gap = np.linalg.norm(image.mean(0) - text.mean(0))
    axes.set_title(f"{title}\nmodality gap (full dimension) = {gap:.3f}")
    axes.set_xlabel("PC 1")
    axes.set_ylabel("PC 2")
    axes.legend(loc="best")
    return save_figure(figure, path)


def plot_class_similarity(similarity: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike,
                          title: str = "cosine similarity of class text embeddings") -> str:
    """Heatmap of the (C, C) similarity matrix with values written in the cells: high off-diagonal values
    mean the text tower barely tells those classes apart."""
    matrix = np.asarray(similarity, dtype=float)
    size = 1.5 + 0.7 * len(class_names)
    figure = new_figure(size + 1.5, size)
    axes = figure.add_subplot()
    shown = axes.imshow(matrix, cmap="viridis", vmin=min(0.0, matrix.min()), vmax=1.0)
    axes.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    for (row, col), value in np.ndenumerate(matrix):
        axes.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                  color="black" if value > 0.6 else "white")
    figure.colorbar(shown, ax=axes)
    axes.set_title(title)
    return save_figure(figure, path)


def plot_retrieval_gallery(images: Sequence[np.ndarray], retrieved: Sequence[Sequence[str]],
                           hits: Sequence[Sequence[bool]], path: str | os.PathLike, words: int = 8,
                           title: str = "image → report retrieval") -> str:
    """One row per query: the image, then its top-k reports (first ``words`` words each), ✓ green for a
    report of the query's own study, ✗ grey otherwise."""
    rows = len(images)
    figure = new_figure(11, 2.4 * rows)
    grid = figure.add_gridspec(rows, 2, width_ratios=(1, 3.5))
    for row, (image, reports, flags) in enumerate(zip(images, retrieved, hits)):
        axes = figure.add_subplot(grid[row, 0])
        axes.imshow(np.asarray(image).squeeze(), cmap="gray")
        axes.set_axis_off()
        axes.set_title(f"query {row + 1}", fontsize=9)
        text_axes = figure.add_subplot(grid[row, 1])
        text_axes.set_axis_off()
        for rank, (report, hit) in enumerate(zip(reports, flags)):
            snippet = " ".join(report.split()[:words]) + (" …" if len(report.split()) > words else "")
            line = f"{rank + 1}. {'✓' if hit else '✗'} {snippet}"
            text_axes.text(0, 1 - (rank + 0.5) / max(len(reports), 1), line, va="center", fontsize=9,
                           color="tab:green" if hit else "0.35", transform=text_axes.transAxes)
    figure.suptitle(title)
    return save_figure(figure, path)
