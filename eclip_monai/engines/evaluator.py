"""Embedding evaluator: one pass over paired (image, report) data, producing features for retrieval metrics.

``ECLIPEvaluator`` is a MONAI ``SupervisedEvaluator`` whose ``_iteration`` encodes both modalities; its output
``(image_features, text_features, groups)`` is what ``metrics.CrossModalRecall`` consumes, where ``groups``
identifies each sample's report text so duplicate reports count as one retrieval candidate.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents

from eclip_monai.engines.trainer import to_device
from eclip_monai.metrics.retrieval import report_group_id

__all__ = ["ECLIPEvaluator"]


class ECLIPEvaluator(SupervisedEvaluator):
    """Encodes images and texts of each validation batch with the network's ``forward``.

    Args:
        device, val_data_loader, network, kwargs: as for ``SupervisedEvaluator`` (``key_val_metric``,
            ``additional_metrics``, ``val_handlers``, ``amp``, ...).
        image_key, text_key: batch keys of the image tensor and the tokenised report.
        report_key: batch key of the raw report strings, hashed into retrieval groups.
    """

    def __init__(self, device, val_data_loader, network, image_key="image", text_key="text", report_key="report",
                 decollate: bool = False, **kwargs: Any):
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, decollate=decollate,
                         **kwargs)
        self.image_key, self.text_key, self.report_key = image_key, text_key, report_key

    def _iteration(self, engine: ECLIPEvaluator, batchdata: dict[str, Any]) -> dict:
        move = dict(non_blocking=self.non_blocking, **self.to_kwargs)
        image = to_device(batchdata[self.image_key], self.state.device, **move)
        text = to_device(batchdata[self.text_key], self.state.device, **move)
        groups = torch.tensor([report_group_id(r) for r in batchdata[self.report_key]], dtype=torch.long)
        engine.network.eval()
        with torch.no_grad(), torch.autocast(self.state.device.type, enabled=bool(engine.amp), **engine.amp_kwargs):
            out = engine.network(image, text)
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return {
            "image_features": out["image_features"].float(),
            "text_features": out["text_features"].float(),
            "groups": groups,
        }
