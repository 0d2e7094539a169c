"""Skip-and-count for bad samples: one corrupt file never kills an epoch.

``SkipBadSamples`` turns a sample whose loading raises ``CXRDataError`` into ``None`` (with one warning line
naming the file and field); ``collate_skip_bad`` drops the ``None`` entries and records how many it dropped
under ``SKIPPED_KEY`` in the batch, so the count travels with the batch out of DataLoader workers and the
trainer adds it to ``engine.state.bad_samples``. Any other exception still stops training: it is a bug, not
bad data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from monai.data import list_data_collate
from torch.utils.data import Dataset

from eclip_monai.errors import CXRDataError

SKIPPED_KEY = "_skipped"
logger = logging.getLogger(__name__)


def _data_error(error: BaseException | None) -> CXRDataError | None:
    """The ``CXRDataError`` behind ``error``: MONAI's ``apply_transform`` re-raises transform errors as
    ``RuntimeError`` with the original as ``__cause__``, possibly several times over in nested ``Compose``."""
    while error is not None and not isinstance(error, CXRDataError):
        error = error.__cause__
    return error


class SkipBadSamples(Dataset):
    """Wraps ``dataset`` so an item that fails with ``CXRDataError`` loads as ``None``; pair with
    ``collate_skip_bad``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:
            error = _data_error(exc)
            if error is None:
                raise
            logger.warning("skipping sample %s: %s", index, error)
            return None


def collate_skip_bad(batch: Sequence) -> dict:
    """``list_data_collate`` over the non-``None`` items of ``batch`` (dictionaries), plus ``SKIPPED_KEY``:
    the number dropped. A batch in which every item was bad collates to ``{SKIPPED_KEY: len(batch)}``."""
    kept = [item for item in batch if item is not None]
    collated = list_data_collate(kept) if kept else {}
    if not isinstance(collated, dict):
        raise TypeError(f"collate_skip_bad needs dictionary samples, found {type(kept[0]).__name__}.")
    collated[SKIPPED_KEY] = len(batch) - len(kept)
    return collated
