"""Skip-and-count for bad samples: one corrupt file never kills an epoch.

``SkipBadSamples`` turns a sample whose loading raises ``CXRDataError`` into ``None`` (with one warning line
naming the file and field); ``collate_skip_bad`` drops the ``None`` entries and records how many it dropped
under ``SKIPPED_KEY`` in the batch, so the count travels with the batch out of DataLoader workers and the
trainer adds it to ``engine.state.bad_samples``. Any other exception still stops training: it is a bug, not
bad data. With ``describe=True`` a bad item loads as a falsy ``BadSample`` (file and reason) instead, and the
collated batch lists them under ``BAD_KEY``, so a run that stops for too many bad samples can say which
reasons and files (``handlers.TrainingGuard``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from monai.data import list_data_collate
from torch.utils.data import Dataset

from eclip_monai.errors import CXRDataError

SKIPPED_KEY = "_skipped"
BAD_KEY = "_bad"
logger = logging.getLogger(__name__)


def data_error(error: BaseException | None) -> CXRDataError | None:
    """The ``CXRDataError`` behind ``error``: MONAI's ``apply_transform`` re-raises transform errors as
    ``RuntimeError`` with the original as ``__cause__``, possibly several times over in nested ``Compose``."""
    while error is not None and not isinstance(error, CXRDataError):
        error = error.__cause__
    return error


class BadSample(NamedTuple):
    """A skipped item: ``reason`` is the error's field and its message up to the first ``", found"``, ``"; "``,
    ``" ("`` or ``": "`` (``"PixelData: could not decode pixel data"``), so that the values which follow do not
    split equal failures into separate counts; ``path`` is the file."""

    reason: str
    path: str

    def __bool__(self) -> bool:  # tested like the None it replaces
        return False

    @classmethod
    def of(cls, error: CXRDataError) -> BadSample:
        short = re.split(r", found|; | \(|: ", error.reason, maxsplit=1)[0][:60]
        return cls(f"{error.field}: {short}" if error.field else short, error.path or "?")


class SkipBadSamples(Dataset):
    """Wraps ``dataset`` so an item that fails with ``CXRDataError`` loads as ``None`` (``describe``: as a
    ``BadSample``); pair with ``collate_skip_bad``."""

    def __init__(self, dataset: Dataset, describe: bool = False):
        self.dataset = dataset
        self.describe = describe

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:
            error = data_error(exc)
            if error is None:
                raise
            logger.warning("skipping sample %s: %s", index, error)
            return BadSample.of(error) if self.describe else None


def collate_skip_bad(batch: Sequence) -> dict:
    """``list_data_collate`` over the good items of ``batch`` (dictionaries), plus ``SKIPPED_KEY``: the
    number dropped (``None`` or ``BadSample``), and, if any were ``BadSample``, ``BAD_KEY``: their
    ``(reason, path)``. A batch in which every item was bad collates to ``{SKIPPED_KEY: len(batch)}`` (and
    ``BAD_KEY``)."""
    kept = [item for item in batch if item is not None and not isinstance(item, BadSample)]
    collated = list_data_collate(kept) if kept else {}
    if not isinstance(collated, dict):
        raise TypeError(f"collate_skip_bad needs dictionary samples, found {type(kept[0]).__name__}.")
    collated[SKIPPED_KEY] = len(batch) - len(kept)
    bad = [tuple(item) for item in batch if isinstance(item, BadSample)]
    if bad:
        collated[BAD_KEY] = bad
    return collated
