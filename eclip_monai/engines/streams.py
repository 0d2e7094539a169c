"""DataLoader passes that can be replayed from any batch: the basis of exact resume.

A run sees its data as one long sequence of batches: pass 0, pass 1, ... of a DataLoader. Pass ``k`` is
ordered by the loader's own sampler seeded from ``(seed, k)`` (``set_epoch(k)`` for a ``DistributedSampler``),
and every item's random transforms are reseeded from ``(seed, k, index)`` just before it is loaded. Batch
``n`` is therefore a pure function of ``n``: a resumed run starts at its batch count without loading the
batches before it, and augmentations do not depend on ``num_workers`` or on what a worker loaded before.

``ResumableLoader`` hands Ignite one pass at a time, starting where the engine's iteration count says;
``ExpertStream`` is the endless expert iterator whose position is the number of expert batches consumed.
Workers are started for each pass (``persistent_workers`` does not carry over).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from monai.transforms import Randomizable
from torch.utils.data import DataLoader, Dataset, IterableDataset

from eclip_monai.seeding import MAX_SEED, derive_seed

logger = logging.getLogger(__name__)


def _randomizable_parts(obj: Any, found: list | None = None, seen: set | None = None) -> list:
    """The ``Randomizable`` objects reachable from ``obj`` (walked like ``monai.data.utils.set_rnd``), found
    once so that reseeding an item costs a few ``set_random_state`` calls, not a walk over the data list."""
    found, seen = ([], set()) if found is None else (found, seen)
    if id(obj) in seen:
        return found
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        found.append(obj)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _randomizable_parts(item, found, seen)
    elif hasattr(obj, "__dict__"):
        for value in vars(obj).values():
            _randomizable_parts(value, found, seen)
    return found


class _SeededItems(Dataset):
    """Loads item ``index`` for key ``(index, seed)`` after reseeding the dataset's random transforms."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.randomizable = _randomizable_parts(dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        for offset, part in enumerate(self.randomizable):
            part.set_random_state(seed=(seed + offset) % MAX_SEED)
        return self.dataset[index]


class SeededPasses:
    """The batches of ``loader`` as reproducible passes (see the module docstring).

    Args:
        loader: a DataLoader over a map-style dataset with automatic batching; its sampler, batch size,
            ``drop_last``, collate function and worker settings are kept.
        seed: the run seed all orders and augmentations derive from.
    """

    def __init__(self, loader: DataLoader, seed: int = 0):
        if isinstance(loader.dataset, IterableDataset) or loader.batch_sampler is None:
            raise TypeError("SeededPasses needs a DataLoader over a map-style dataset with a batch size.")
        if len(loader) == 0:
            raise ValueError("SeededPasses needs a DataLoader that yields at least one batch per pass.")
        self.loader = loader
        self.seed = seed
        self._items = _SeededItems(loader.dataset)

    def __len__(self) -> int:
        """Batches per pass."""
        return len(self.loader)

    def iter_from(self, position: int) -> Iterator:
        """Batches from global batch number ``position`` to the end of the pass that holds it."""
        pass_index, start = divmod(position, len(self))
        sampler = self.loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(pass_index)
        with torch.random.fork_rng(devices=[]):  # samplers that shuffle with the global RNG see a seeded one
            torch.manual_seed(derive_seed(self.seed, "order", pass_index))
            order = list(self.loader.batch_sampler)[start:]
        item_seed = derive_seed(self.seed, "item", pass_index)
        loader = self.loader
        return iter(
            DataLoader(
                self._items,
                batch_sampler=[[(i, item_seed + i) for i in batch] for batch in order],
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
                pin_memory=loader.pin_memory,
                timeout=loader.timeout,
                worker_init_fn=loader.worker_init_fn,
                multiprocessing_context=loader.multiprocessing_context,
                prefetch_factor=loader.prefetch_factor,
                generator=torch.Generator().manual_seed(derive_seed(self.seed, "workers", pass_index)),
            )
        )


class ResumableLoader(SeededPasses):
    """The training loader given to Ignite: each ``iter()`` continues at the engine's batch count.

    Ignite 0.5.5 restarts the data iterator when it resumes mid-epoch and counts the epoch's remaining
    iterations; starting that iterator at ``position()`` (the engine's iteration, i.e. batches consumed) makes
    those iterations see exactly the batches an uninterrupted run would have seen.

    Args:
        loader: see ``SeededPasses``.
        seed: see ``SeededPasses``.
        position: returns the number of batches consumed so far (``lambda: engine.state.iteration``).
    """

    def __init__(self, loader: DataLoader, seed: int, position: Callable[[], int]):
        super().__init__(loader, seed)
        self.position = position

    def __iter__(self) -> Iterator:
        return self.iter_from(self.position())


class ExpertStream(SeededPasses):
    """Endless iterator over the expert loader; ``state_dict`` holds the batches consumed so a resumed run
    continues with the same expert batches, skipping the consumed ones without loading them."""

    def __init__(self, loader: DataLoader, seed: int = 0):
        super().__init__(loader, seed)
        self.consumed = 0
        self._batches: Iterator | None = None

    def __iter__(self) -> ExpertStream:
        return self

    def __next__(self) -> Any:
        while True:
            if self._batches is None:
                self._batches = self.iter_from(self.consumed)
            try:
                batch = next(self._batches)
                break
            except StopIteration:
                self._batches = None
        self.consumed += 1
        return batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "batches_per_pass": len(self), "seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        """Continue after ``state_dict["consumed"]`` batches (with a warning if the loader or seed changed, as
        the resumed run then no longer replays the saved run's expert batches)."""
        saved = (state_dict["batches_per_pass"], state_dict["seed"])
        if saved != (len(self), self.seed):
            logger.warning(
                "expert stream resumed with batches_per_pass=%d, seed=%d but saved with batches_per_pass=%d, "
                "seed=%d: the expert batches will differ from the interrupted run's.",
                len(self), self.seed, *saved,
            )
        self.consumed = int(state_dict["consumed"])
        self._batches = None
