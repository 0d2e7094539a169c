"""Training data streamed from preprocessed shards to DDP ranks and DataLoader workers.

``ShardDataset`` is a map-style dataset over the memory-mapped shards of ``data.shards.ShardSet``;
``ShardSampler`` gives each rank its part of one global order per epoch.

Why map-style over memory maps, not an iterable stream with a shuffle buffer: a memory-mapped row is read
in O(1) from anywhere in its shard, so random access costs what a sequential read costs as long as the reads
stay within a few shards (the page cache holds them). Map-style then gives the rest for free: the DataLoader
hands each worker whole batches (workers are disjoint by construction, and their number changes nothing),
and ``engines.streams.SeededPasses`` resumes at any batch without reading the ones before it and seeds each
item's augmentation from its dataset index, so the same sample is augmented alike on any rank of any world
size. An iterable stream would have to checkpoint its buffer's contents, or replay the epoch, to resume.

The global order of epoch ``e`` is a function of ``(seed, e)`` alone: the shards are permuted, cut into
windows of ``window`` consecutive shards, and the samples of each window are shuffled together. That is a
shuffle buffer of one window's samples which is never held in memory: the images stay in the shards until
their batch is read. The order is cut into global batches (the remainder, a different one each epoch, is
dropped) and rank ``r`` of ``W`` takes rows ``[r·b, (r+1)·b)`` of every global batch, ``b = global / W``.
The ranks are therefore disjoint and together read every sample of the epoch's batches exactly once, and
the global batch is the same for any ``W``: with DDP's gathered InfoNCE and averaged gradients a step on two
nodes is the step of one process, and a run may resume on another number of processes (same global batch).
The data position is the trainer's iteration count (global batches consumed), already in its checkpoint.

Memory bound. Per process: the index (8 bytes per selected sample), one epoch's order (8 bytes per sample;
``SeededPasses`` lists this rank's batches as Python integers, about 40 bytes per sample, in the main process
only), the records and memory maps of at most ``cache_shards`` shards (``ShardSet``'s bound; with
``keep_records``, for the small gaze set, its selected records) and, per worker, ``prefetch_factor``
batches of items. Images are memory-mapped, never copied in bulk. While a window holds more samples than the
batches in flight (``window · count ≥ (1 + workers · prefetch_factor) · global batch``), the reads in flight
lie within two consecutive windows, so every rank of a node reads from the same ``2 · window`` shards and the
page cache needs ``2 · window · count · S²`` bytes per node (1.1 GB at the defaults: 8-shard windows of
1,000 images at S = 258), reclaimable by the OS, whatever the number of ranks and workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from monai.data import MetaTensor
from monai.transforms import apply_transform
from torch.utils.data import Dataset, Sampler

from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.shards import ShardSet
from eclip_monai.errors import CXRDataError
from eclip_monai.seeding import derive_seed

__all__ = ["ShardDataset", "ShardSampler"]

logger = logging.getLogger(__name__)

ITEM_FIELDS = ("dicom_id", "subject_id", "study_id", "split", "view", "report", "labels")
GAZE_FIELDS = ("fixations", "pixels_per_degree", "gaze_source")


class ShardDataset(Dataset):
    """The samples of a shard set whose split is in ``splits`` (and view in ``views``), in shard order.

    Item ``i`` holds the record's ``dicom_id``, ``subject_id``, ``study_id``, ``split``, ``view``, ``report``
    and ``labels`` (float32, NaN where unknown), with ``gaze_only`` also ``fixations`` (F, 3) in shard pixels,
    ``pixels_per_degree`` and ``gaze_source``, and ``image``: a float32 ``MetaTensor`` (1, S, S) in [0, 1]
    whose ``spatial_shape`` is (S, S), the frame of the fixations, and whose ``filename_or_obj`` names the
    shard file and row. The image is already decoded, VOI-applied and resized, so the pipelines of
    ``transforms.pipelines`` take ``loader=monai.transforms.Identityd``: their DICOM load step is replaced,
    the steps after it are the same. Every item has the same keys, so batches collate.

    Which rows qualify is read once, here: from the manifest where it decides (a shard of another split, one
    without gaze for ``gaze_only``, every row where the set was written with views inside ``views``), else
    from the shard's records, which are not kept.

    Args:
        shards: a ``ShardSet`` or its root folder.
        transform: applied to each item, as ``monai.data.Dataset`` does.
        splits: record splits to keep.
        views: record views to keep (``None``: every view); the default keeps frontal images, as
            ``build_mimic_datalist`` does.
        gaze_only: keep only records with fixations (the expert stream).
        keep_records: hold the selected records in memory (default: with ``gaze_only``, a few thousand
            records even on MIMIC-CXR, spread over most shards); otherwise records are read per shard.
        cache_shards: shards whose records and memory maps a process holds at a time (``ShardSet``);
            at least twice the sampler's ``window`` so that a step's reads never reopen a shard.
    """

    def __init__(
        self,
        shards: ShardSet | str | os.PathLike,
        transform: Callable | None = None,
        splits: Sequence[str] = ("train",),
        views: Sequence[str] | None = FRONTAL_VIEWS,
        gaze_only: bool = False,
        keep_records: bool | None = None,
        cache_shards: int = 16,
    ):
        self.root = os.fspath(shards.root if isinstance(shards, ShardSet) else shards)
        self.shards = ShardSet(self.root, cache_shards=cache_shards)
        manifest = self.shards.manifest
        self.manifest_path = os.path.join(self.root, "manifest.json")
        self.names = [entry["name"] for entry in manifest["shards"]]
        self.shards_digest = _digest([[e["name"], e["count"], e.get("sha256")] for e in manifest["shards"]])
        self.transform = transform
        self.splits, self.gaze_only = tuple(splits), gaze_only
        self.views = None if views is None else tuple(views)
        self.fields = ITEM_FIELDS + (GAZE_FIELDS if gaze_only else ())
        keep = gaze_only if keep_records is None else keep_records
        self.records: list[dict] | None = [] if keep else None
        written_views = manifest.get("settings", {}).get("views")
        rows = [self._select(shard, entry, written_views) for shard, entry in enumerate(manifest["shards"])]
        self.shard_of = np.concatenate([np.full(len(r), s, np.int32) for s, r in enumerate(rows)] or [[]])
        self.row_of = np.concatenate(rows or [[]]).astype(np.int32)
        self.shard_starts = np.cumsum([0] + [len(r) for r in rows])  # shard s holds [starts[s], starts[s+1])
        if not len(self.row_of):
            what = f"splits {list(self.splits)}" + ("" if views is None else f", views {list(self.views)}")
            found = sum(int(e["count"]) for e in manifest["shards"])
            what += " with fixations" if gaze_only else ""
            raise CXRDataError(f"expected records of {what}, found none among {found} records",
                               path=self.manifest_path, field="split")

    def _select(self, shard: int, entry: dict, written_views: Sequence[str] | None) -> np.ndarray:
        """Rows of ``shard`` that this dataset keeps."""
        split = entry.get("split")
        if (split is not None and split not in self.splits) or (self.gaze_only and entry.get("gaze") == 0):
            return np.zeros(0, np.int64)
        views_hold = self.views is None or (written_views is not None
                                            and set(written_views) <= set(self.views))
        if split is not None and views_hold and not self.gaze_only and self.records is None:
            return np.arange(int(entry["count"]))
        keep = []
        for row, record in enumerate(self.shards.records(shard)):  # held within the cache_shards bound
            view_ok = self.views is None or record.get("view") in self.views
            gaze_ok = not self.gaze_only or len(record.get("fixations") or ()) > 0
            if record.get("split") in self.splits and view_ok and gaze_ok:
                keep.append(row)
                if self.records is not None:
                    self.records.append(record)
        return np.asarray(keep, np.int64)

    def __len__(self) -> int:
        return len(self.row_of)

    def location(self, index: int) -> str:
        """``<root>/<shard>.npy[row]``: where item ``index`` is stored."""
        shard, row = int(self.shard_of[index]), int(self.row_of[index])
        return f"{os.path.join(self.root, self.names[shard])}.npy[{row}]"

    def __getitem__(self, index: int) -> Any:
        shard, row = int(self.shard_of[index]), int(self.row_of[index])
        if self.records is None:
            record = self.shards.read(shard, row)
        else:
            record = {**self.records[index], "image": self.shards.image(shard, row)}
        if record.get("report") in (None, ""):
            raise CXRDataError("expected report text, found none", path=self.location(index), field="report")
        item = {key: record.get(key, "") for key in self.fields}
        labels = record.get("labels") or ()
        item["labels"] = np.asarray([np.nan if v is None else v for v in labels], np.float32)
        image = torch.as_tensor(np.asarray(record["image"], np.float32))
        item["image"] = MetaTensor(image, meta={"filename_or_obj": self.location(index),
                                                "spatial_shape": np.asarray(image.shape[1:])})
        if self.gaze_only:
            item["fixations"] = np.asarray(record["fixations"], np.float32).reshape(-1, 3)
        return apply_transform(self.transform, item) if self.transform is not None else item


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _world(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    initialised = dist.is_available() and dist.is_initialized()
    world = num_replicas if num_replicas is not None else dist.get_world_size() if initialised else 1
    return int(world), int(rank if rank is not None else dist.get_rank() if initialised else 0)


class ShardSampler(Sampler[int]):
    """This rank's part of the epoch's global order (see the module docstring); ``set_epoch`` as
    ``DistributedSampler``. Use it as a DataLoader's ``sampler`` with ``batch_size=global_batch_size //
    num_replicas``; it yields whole batches, so ``len(loader)`` is the number of global batches per epoch on
    every rank and for any world size.

    Args:
        dataset: the ``ShardDataset`` to order (its shard of each index decides the windows).
        global_batch_size: samples per step over all ranks; a multiple of ``num_replicas``.
        seed: the run seed; the order of epoch ``e`` depends on ``(seed, e)`` only.
        window: shards whose samples are shuffled together (the shuffle buffer, in shards); ``None``: all
            shards, a full shuffle (for a small set such as the gaze images).
        num_replicas, rank: the world size and this rank; by default from ``torch.distributed``.
    """

    def __init__(self, dataset: ShardDataset, global_batch_size: int, seed: int = 0, window: int | None = 8,
                 num_replicas: int | None = None, rank: int | None = None):
        self.dataset, self.seed, self.window = dataset, int(seed), None if window is None else int(window)
        self.global_batch_size = int(global_batch_size)
        self.num_replicas, self.rank = _world(num_replicas, rank)
        if self.window is not None and self.window < 1:
            raise ValueError(f"window: expected a number of shards >= 1 or None, found {window}")
        if self.global_batch_size % self.num_replicas or not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"global_batch_size {self.global_batch_size} must split evenly over "
                             f"{self.num_replicas} processes (rank {self.rank})")
        self.batch_size = self.global_batch_size // self.num_replicas
        self.batches = len(dataset) // self.global_batch_size
        if self.batches < 1:
            raise CXRDataError(f"expected at least global_batch_size={self.global_batch_size} samples, found "
                               f"{len(dataset)}", path=dataset.manifest_path, field="shards")
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self, epoch: int) -> np.ndarray:
        """The dataset indices of epoch ``epoch`` for all ranks, ``batches · global_batch_size`` of them."""
        rng = np.random.default_rng(derive_seed(self.seed, "shard order", epoch))
        starts = self.dataset.shard_starts
        shards = rng.permutation(len(starts) - 1)
        step = len(shards) if self.window is None else self.window
        parts = []
        for first in range(0, len(shards), step):
            window = shards[first:first + step]
            indices = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in window])
            parts.append(rng.permutation(indices))
        return np.concatenate(parts)[: self.batches * self.global_batch_size]

    def __iter__(self) -> Iterator[int]:
        order = self.global_order(self.epoch).reshape(self.batches, self.num_replicas, self.batch_size)
        return iter(order[:, self.rank].ravel().tolist())

    def __len__(self) -> int:
        return self.batches * self.batch_size

    def state_dict(self) -> dict:
        """What the order depends on, checked when a run resumes; the position itself is the trainer's
        iteration. World size and rank are not part of it: the global order does not depend on them."""
        selection = [list(self.dataset.splits), self.dataset.views, self.dataset.gaze_only]
        return {"seed": self.seed, "global_batch_size": self.global_batch_size, "window": self.window,
                "samples": len(self.dataset),
                "shards_digest": _digest([self.dataset.shards_digest, selection])}

    def load_state_dict(self, state_dict: dict) -> None:
        """Warn (as ``ExpertStream`` does) when the saved run ordered other shards, samples or batches: the
        resumed run then no longer replays the interrupted run's batches."""
        current = self.state_dict()
        changed = {k: (state_dict.get(k), v) for k, v in current.items() if state_dict.get(k) != v}
        if changed:
            logger.warning("shard order resumed with other settings (saved, now): %s; the batches will "
                           "differ from the interrupted run's.", changed)
