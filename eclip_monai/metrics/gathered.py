"""Base for Ignite metrics that need every sample at once (rankings, centroids, AUROC)."""

from __future__ import annotations

import ignite.distributed as idist
import torch
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.utils import evenly_divisible_all_gather


class GatheredMetric(Metric):
    """Keeps each batch's output tensors on the CPU; :meth:`gathered` concatenates them over batches and,
    under ``torch.distributed``, over ranks, so ``compute`` scores the whole set the same way on any number of
    processes. ``output_transform`` must yield a tuple of tensors (or sequences) with one row per sample."""

    @reinit__is_reduced
    def reset(self) -> None:
        self._batches: list[tuple[torch.Tensor, ...]] = []

    @reinit__is_reduced
    def update(self, output) -> None:
        parts = (torch.as_tensor(x).detach().cpu() for x in output)
        self._batches.append(tuple(x.float() if x.is_floating_point() else x for x in parts))

    def gathered(self) -> list[torch.Tensor]:
        if not self._batches:
            raise RuntimeError(f"{type(self).__name__} needs at least one batch before compute()")
        parts = [torch.cat(columns) for columns in zip(*self._batches)]
        if idist.get_world_size() > 1:  # ranks may hold different numbers of samples (no padded duplicates)
            device = idist.device()
            parts = [evenly_divisible_all_gather(p.to(device), concat=True).cpu() for p in parts]
        return parts
