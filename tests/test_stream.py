"""Shards streamed to DDP ranks and DataLoader workers: disjoint parts that cover each epoch once, one global
order whatever the world size, windows that bound the shards read at a time, exact resume, clear errors.

The shards are written by ``data.shards.write_shards`` from a 48-study phantom world: 36 training images (29
with gaze) in 6 shards of 6, plus a validation and a test shard, at 32².
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.transforms import Identityd
from torch.utils.data import DataLoader, get_worker_info

from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.mimic import MIMIC_SPLITS
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.data.shards import collect_items, write_shards
from eclip_monai.data.stream import ShardDataset, ShardSampler
from eclip_monai.engines import ECLIPTrainer, SeededPasses
from eclip_monai.errors import CXRDataError
from eclip_monai.handlers import (
    AtomicCheckpointSaver,
    ExpertCurriculumHandler,
    VerifiedCheckpointLoader,
    checkpoint_objects,
)
from eclip_monai.losses import ContrastiveLoss
from eclip_monai.networks import build_eclip, build_tokenizer
from eclip_monai.transforms.pipelines import shard_transforms, train_transforms

SIZE, PER_SHARD, TRAIN = 32, 6, 36
TINY = {"embed_dim": 32, "vision_cfg": {"width": 64, "layers": 1, "head_width": 32, "patch_size": 8},
        "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": 16}}


def write_phantom_shards(root: Path, studies: int = 48, size: int = SIZE, per_shard: int = PER_SHARD) -> Path:
    """A phantom world preprocessed as ``scripts/preprocess_shards.py`` does; returns the shards folder."""
    world = ensure_phantom(root / "phantom", studies=studies, seed=0, eval_size=0, workers=1, progress=False,
                           egd_fraction=0.4, reflacx_fraction=0.4)
    items = collect_items(world / "mimic-cxr", world / "egd-cxr", world / "reflacx")
    settings = {"splits": list(MIMIC_SPLITS), "views": list(FRONTAL_VIEWS)}
    write_shards(items, root / "shards", shard_transforms(size), image_size=size,
                 images_per_shard=per_shard, settings=settings, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_phantom_shards(tmp_path_factory.mktemp("stream"))


def id_and_worker(item: dict) -> dict:
    """Which sample, and which DataLoader worker loaded it (-1: the main process)."""
    worker = get_worker_info()
    return {"dicom_id": item["dicom_id"], "worker": -1 if worker is None else worker.id}


def passes(shards: Path, world: int, rank: int, batch: int, num_workers: int = 0, transform=id_and_worker,
           window: int | None = 2, dataset: ShardDataset | None = None) -> SeededPasses:
    dataset = dataset or ShardDataset(shards, transform)
    sampler = ShardSampler(dataset, batch, seed=5, window=window, num_replicas=world, rank=rank)
    loader = DataLoader(SkipBadSamples(dataset), batch // world, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_skip_bad)
    return SeededPasses(loader, seed=5)


def epoch_ids(stream: SeededPasses, epoch: int) -> list[list[str]]:
    return [batch["dicom_id"] for batch in stream.iter_from(epoch * len(stream))]


def test_ranks_and_workers_read_disjoint_parts_that_cover_each_epoch_once(shards):
    everything = {item["dicom_id"] for item in ShardDataset(shards, id_and_worker)}
    assert len(everything) == TRAIN
    alone = passes(shards, 1, 0, 6)
    for epoch in (0, 1):
        reference = epoch_ids(alone, epoch)
        assert sorted(sum(reference, [])) == sorted(everything)  # each training image exactly once
        for world in (2, 3):
            ranks = [epoch_ids(passes(shards, world, rank, 6), epoch) for rank in range(world)]
            assert [sum(parts, []) for parts in zip(*ranks)] == reference  # rank r: slice r of each batch
    assert epoch_ids(alone, 0) != epoch_ids(alone, 1)  # reshuffled per epoch

    with_workers = list(passes(shards, 2, 1, 6, num_workers=2).iter_from(0))
    by_worker: dict[int, set] = {}
    for batch in with_workers:
        for dicom_id, worker in zip(batch["dicom_id"], batch["worker"].tolist()):
            by_worker.setdefault(worker, set()).add(dicom_id)
    assert set(by_worker) == {0, 1} and not by_worker[0] & by_worker[1]  # whole batches per worker
    assert [b["dicom_id"] for b in with_workers] == epoch_ids(passes(shards, 2, 1, 6), 0)  # as with none


def test_the_order_depends_on_seed_and_epoch_only_and_reads_at_most_two_windows_at_a_time(shards):
    dataset = ShardDataset(shards)
    shard_of = dataset.shard_of
    for window in (1, 2, 4):
        sampler = ShardSampler(dataset, 4, seed=1, window=window)
        order = sampler.global_order(3)
        assert np.array_equal(order, ShardSampler(dataset, 4, seed=1, window=window, num_replicas=2,
                                                  rank=1).global_order(3))
        assert not np.array_equal(order, sampler.global_order(4))
        assert not np.array_equal(order, ShardSampler(dataset, 4, seed=2, window=window).global_order(3))
        assert len(set(order.tolist())) == len(order) == TRAIN
        for start in range(0, len(order), 4):  # a global batch straddles at most two windows
            assert len(set(shard_of[order[start:start + 4]].tolist())) <= 2 * window
    blocks = ShardSampler(dataset, 4, seed=1, window=1).global_order(0)
    changes = np.count_nonzero(np.diff(shard_of[blocks]))
    assert changes == TRAIN // PER_SHARD - 1  # window 1: one shard after another...
    assert any(np.any(np.diff(blocks[i:i + PER_SHARD]) < 0) for i in range(0, TRAIN, PER_SHARD))  # shuffled
    full = ShardSampler(dataset, 4, seed=1, window=None).global_order(0)
    assert np.count_nonzero(np.diff(shard_of[full])) > TRAIN // PER_SHARD  # one window: shards interleave


def test_a_resumed_stream_replays_the_same_augmented_batches_on_any_world_size(shards):
    class Counting(ShardDataset):
        reads = 0

        def __getitem__(self, index):
            Counting.reads += 1
            return super().__getitem__(index)

    def stream(world, rank):
        pipeline = train_transforms(16, with_heatmap=True, loader=Identityd, crop_scale=(0.3, 1.0))
        dataset = Counting(shards, pipeline, gaze_only=True)
        return passes(shards, world, rank, 4, dataset=dataset, window=None)

    full = stream(1, 0)
    per_pass = len(full)
    batches = list(full.iter_from(0)) + list(full.iter_from(per_pass))
    Counting.reads = 0
    resumed = list(stream(1, 0).iter_from(3)) + list(stream(1, 0).iter_from(per_pass))
    assert Counting.reads == (len(batches) - 3) * 4  # the 3 consumed batches were not read again
    for a, b in zip(batches[3:], resumed):
        assert a["dicom_id"] == b["dicom_id"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["heatmap"], b["heatmap"])
    halves = [list(stream(2, rank).iter_from(0)) for rank in (0, 1)]
    for whole, first, second in zip(batches, *halves):  # the same crops, CLAHE and heatmaps on 2 ranks
        assert torch.equal(whole["image"], torch.cat([first["image"], second["image"]]))


def _train(shards: Path, save_to: Path | None = None, resume_from: Path | None = None, stop_at: int = 0,
           window: int = 2) -> ECLIPTrainer:
    """The shards overlay's training at toy size: real pipelines, tokenizer and a tiny eCLIP, 2 epochs."""
    tokenizer = build_tokenizer("eclip-tiny", context_length=16)
    main = ShardDataset(shards, train_transforms(SIZE, tokenizer=tokenizer, loader=Identityd))
    expert = ShardDataset(shards, train_transforms(SIZE, tokenizer=tokenizer, loader=Identityd,
                                                   with_heatmap=True), gaze_only=True)
    order = ShardSampler(main, 6, seed=3, window=window)
    loader = DataLoader(SkipBadSamples(main, describe=True), 6, sampler=order, collate_fn=collate_skip_bad)
    expert_loader = DataLoader(SkipBadSamples(expert, describe=True), 2,
                               sampler=ShardSampler(expert, 2, 3, None), collate_fn=collate_skip_bad)
    torch.manual_seed(0)
    network = build_eclip(model_name="eclip-tiny", model_cfg=TINY, image_size=SIZE, hp_dim=32, hp_heads=2)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    curriculum = ExpertCurriculumHandler(12, mode="constant", constant_p=0.5, priming=False, seed=3)
    trainer = ECLIPTrainer(device="cpu", max_epochs=2, train_data_loader=loader, network=network,
                           optimizer=optimizer, loss_function=ContrastiveLoss(),
                           expert_data_loader=expert_loader, seed=3, train_handlers=[curriculum])
    objects = checkpoint_objects(trainer, network=network, optimizer=optimizer, curriculum=curriculum,
                                 data_order=order)
    if save_to is not None:
        AtomicCheckpointSaver(str(save_to), objects, save_interval=4, epoch_level=False).attach(trainer)
    if resume_from is not None:
        VerifiedCheckpointLoader(load_path=str(resume_from), load_dict=objects).attach(trainer)
    if stop_at:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    trainer.run()
    return trainer


def test_training_resumed_mid_epoch_from_a_checkpoint_ends_where_the_uninterrupted_run_ends(shards, tmp_path):
    full = _train(shards)
    _train(shards, save_to=tmp_path, stop_at=9)
    checkpoint = torch.load(tmp_path / "checkpoint_iteration=8.pt", weights_only=True)
    assert checkpoint["data_order"]["global_batch_size"] == 6 and checkpoint["trainer"]["iteration"] == 8
    resumed = _train(shards, resume_from=tmp_path / "checkpoint_iteration=8.pt")  # epoch 2, batch 2
    assert full.state.iteration == resumed.state.iteration == 12
    assert 0 < full.expert_stream.consumed == resumed.expert_stream.consumed < 12
    for (name, a), b in zip(full.network.state_dict().items(), resumed.network.state_dict().values()):
        assert torch.equal(a, b), name


def test_resuming_with_another_order_warns(shards, caplog):
    dataset = ShardDataset(shards)
    saved = ShardSampler(dataset, 6, seed=0, window=2).state_dict()
    with caplog.at_level(logging.WARNING, logger="eclip_monai.data.stream"):
        ShardSampler(dataset, 6, seed=0, window=2, num_replicas=2, rank=1).load_state_dict(saved)
        assert not caplog.records  # another world size, the same global order
        ShardSampler(dataset, 6, seed=0, window=3).load_state_dict(saved)
    assert "window" in caplog.text and "batches will differ" in caplog.text


def test_a_process_holds_the_records_and_maps_of_a_bounded_number_of_shards(shards):
    dataset = ShardDataset(shards, cache_shards=2)
    assert dataset.records is None  # the training set's records stay in the shards
    held = []
    for index in ShardSampler(dataset, 6, seed=0, window=1).global_order(0):
        assert dataset[int(index)]["image"].shape == (1, SIZE, SIZE)
        held.append(len(dataset.shards.cached_shards))
    assert max(held) == 2
    gaze = ShardDataset(shards, gaze_only=True)
    assert len(gaze.records) == len(gaze) == 29 and all(len(r["fixations"]) for r in gaze.records)


def test_missing_or_unusable_shards_raise_errors_that_name_the_file_and_field(shards, tmp_path):
    with pytest.raises(CXRDataError, match="manifest.json"):
        ShardDataset(tmp_path / "nowhere")
    with pytest.raises(CXRDataError, match=r"manifest.json: split: expected records of splits \['tets'\]"):
        ShardDataset(shards, splits=("tets",))
    dataset = ShardDataset(shards)
    with pytest.raises(CXRDataError, match="shards: expected at least global_batch_size=64 samples, found"):
        ShardSampler(dataset, 64)
    with pytest.raises(ValueError, match="global_batch_size 6 must split evenly over 4 processes"):
        ShardSampler(dataset, 6, num_replicas=4, rank=0)
