"""The inference step: one forward pass of a ``ZeroShotClassifier`` per batch, yielding both of its outputs.

``ZeroShotInferer`` embeds each image once and derives the finding probabilities from that embedding, so the
probabilities and the embedding written for an image always come from the same features. The network's own
``forward`` (image → probabilities) is what ``verify_net_in_out``, TorchScript and ONNX see.

``InferenceEvaluator`` is MONAI's ``SupervisedEvaluator`` fed by ``SkipBadSamples`` + ``collate_skip_bad``:
a file that cannot be read is skipped with a warning naming it, and a batch in which every file was bad is
passed over instead of crashing the run. At the end it logs how many files were skipped and fails only when
none could be read.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer
from monai.utils import CommonKeys, convert_to_tensor

from eclip_monai.data.robust import SKIPPED_KEY
from eclip_monai.errors import CXRDataError

__all__ = ["InferenceEvaluator", "ZeroShotInferer"]
logger = logging.getLogger(__name__)


class ZeroShotInferer(Inferer):
    """``network.embed``, then ``network.probabilities``: ``{"probabilities": (N, F), "embedding": (N, D)}``.
    """

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any
                 ) -> dict[str, torch.Tensor]:
        features = network.embed(convert_to_tensor(inputs, track_meta=False))
        return {"probabilities": network.probabilities(features), "embedding": features.float()}


class InferenceEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` that tolerates unreadable inputs, counted in ``state.skipped``.

    Args: as for ``SupervisedEvaluator``; ``decollate`` stays on so postprocessing writes one image at a time.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_event_handler(Events.STARTED, self._reset_counts)
        self.add_event_handler(Events.COMPLETED, self._report)

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, Any]) -> dict:
        engine.state.skipped += int(batchdata.pop(SKIPPED_KEY, 0))
        if CommonKeys.IMAGE not in batchdata:  # every file of this batch failed to load
            return {}
        engine.state.processed += len(batchdata[CommonKeys.IMAGE])
        return super()._iteration(engine, batchdata)

    @staticmethod
    def _reset_counts(engine: SupervisedEvaluator) -> None:
        engine.state.skipped, engine.state.processed = 0, 0

    @staticmethod
    def _report(engine: SupervisedEvaluator) -> None:
        total = engine.state.skipped + engine.state.processed
        if engine.state.processed == 0:
            raise CXRDataError(f"none of the {total} input files could be read (see the warnings above)",
                               field="input_dir")
        if engine.state.skipped:
            logger.warning("%d of %d input files could not be read and were skipped (see the warnings above)",
                           engine.state.skipped, total)
        logger.info("wrote results for %d image(s)", engine.state.processed)
