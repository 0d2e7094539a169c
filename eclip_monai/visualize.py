"""Figures for looking at gaze: image, coloured heatmap and fixation dots in one PNG (used by the demo).

Uses matplotlib's object API with the Agg canvas (no pyplot state), so it is safe in workers and headless.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from eclip_monai.transforms.overlay import HeatmapOverlay

__all__ = ["save_overlay_png"]


def save_overlay_png(image, heatmap, path: str | os.PathLike, fixations=None, title: str | None = None,
                     alpha: float = 0.6, size_inches: float = 6.0, dpi: int = 100) -> str:
    """Write the image with its heatmap blended in colour (and fixations as dots) to ``path``; return it.

    Args:
        image: (C, H, W) or (H, W) image, any intensity range (scaled for display).
        heatmap: (1, H, W) or (H, W) in [0, 1], same frame as the image.
        fixations: optional (N, 2+) ``[x, y, (duration_s)]`` *in the displayed image's pixels*; dot area
            grows with duration.
        title: optional title above the image.
        size_inches: length of the figure's longer image side, whatever the image's pixel size.
    """
    image, heatmap = torch.as_tensor(np.asarray(image)), torch.as_tensor(np.asarray(heatmap))
    image = image[None] if image.ndim == 2 else image
    heatmap = heatmap[None] if heatmap.ndim == 2 else heatmap
    rgb = HeatmapOverlay("color", alpha=alpha)(image, heatmap).permute(1, 2, 0).clamp(0, 1).numpy()
    height, width = rgb.shape[:2]
    inches = size_inches / max(height, width)
    title_inches = 0.4 if title else 0.0
    figure = Figure(figsize=(width * inches, height * inches + title_inches), dpi=dpi)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0, 0, 1, 1 - title_inches / figure.get_figheight()))
    axes.imshow(rgb, interpolation="nearest")
    if fixations is not None and len(fixations):
        fix = np.asarray(fixations, dtype=float)
        sizes = 20 + 80 * (fix[:, 2] / max(fix[:, 2].max(), 1e-9)) if fix.shape[1] > 2 else 30
        axes.scatter(fix[:, 0], fix[:, 1], s=sizes, facecolors="none", edgecolors="cyan", linewidths=1.2)
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    axes.set_axis_off()
    if title:
        figure.suptitle(title, y=0.995, va="top")
    path = os.fspath(path)
    figure.savefig(path, dpi=dpi)
    return path
