"""ECLIPTrainer: the eCLIP step, expert injection, priming, skip-and-count of bad samples and exact resume.

A stand-in network (~700 parameters, 8x8 images) implements the ``eclip_monai.networks.ECLIP`` contract,
including a Beta mixup draw from the global RNG, so resume tests also cover the network's randomness; the
datasets carry a random MONAI augmentation, so they also cover per-item augmentation seeding.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ignite.engine import Engine, Events
from monai.data import Dataset
from monai.handlers import CheckpointLoader, CheckpointSaver, LrScheduleHandler, StatsHandler
from monai.transforms import Compose, RandGaussianNoised, Transform
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.engines import ECLIPTrainer, ExpertStream, SeededPasses
from eclip_monai.errors import CXRDataError
from eclip_monai.handlers import AtomicCheckpointSaver, ExpertCurriculumHandler, checkpoint_objects
from eclip_monai.losses import ContrastiveLoss

SIZE, CLASSES, VOCAB, BATCH, EXPERT_BATCH = 8, 4, 16, 8, 4
OUTPUT_KEYS = {
    "loss", "loss_clip", "loss_prime", "acc_i2t", "acc_t2i", "temperature", "logit_scale", "grad_norm",
    "expert_p", "expert_used", "expert_batches", "n_main", "n_expert", "bad_samples", "lr", "skipped",
}  # fmt: skip


class ToyECLIP(nn.Module):
    """The ECLIP contract at toy size: linear towers, a 3x3-conv "heatmap processor", Beta(0.2, 0.2) mixup."""

    has_experts = True

    def __init__(self, dim: int = 8):
        super().__init__()
        self.image_proj = nn.Linear(SIZE * SIZE, dim, bias=False)
        self.text_embed = nn.EmbeddingBag(VOCAB, dim)
        self.processor = nn.Conv2d(2, 1, 3, padding=1)
        self.log_scale = nn.Parameter(torch.tensor(1 / 0.07).log())
        self.batch_sizes: list[int] = []

    def encode_image(self, image):
        return F.normalize(self.image_proj(image.flatten(1)), dim=-1)

    def encode_text(self, tokens):
        return F.normalize(self.text_embed(tokens), dim=-1)

    def expert_images(self, image, heatmap):
        expert = self.processor(torch.cat([image, heatmap * image], dim=1))
        lam = torch.distributions.Beta(0.2, 0.2).sample((image.shape[0], 1, 1, 1))
        return lam * image + (1 - lam) * expert

    def prime(self, image):
        return self.processor(torch.cat([image, image], dim=1))

    def logit_scale(self):
        return self.log_scale.clamp(max=4.6052).exp()

    def forward(self, image, text, expert_image=None, expert_heatmap=None, prime=False):
        images = image
        if expert_image is not None:
            images = torch.cat([image, self.expert_images(expert_image, expert_heatmap)])
        assert len(text) == len(images), "one text row per image"
        self.batch_sizes.append(len(images))
        out = {"image_features": self.encode_image(images), "text_features": self.encode_text(text)}
        out["logit_scale"] = self.logit_scale()
        if prime:
            out["primed"] = self.prime(image)
        return out


class RejectCorrupt(Transform):
    """Fails like a reader on a truncated DICOM."""

    def __call__(self, item):
        if item["path"].endswith("corrupt.dcm"):
            reason = "expected 64 pixels, found a truncated file"
            raise CXRDataError(reason, path=item["path"], field="PixelData")
        return item


def make_dataset(n: int, corrupt: tuple[int, ...] = (), seed: int = 0) -> Dataset:
    """Images of ``CLASSES`` patterns plus noise, texts naming the class, random gaze heatmaps."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(CLASSES, 1, SIZE, SIZE, generator=g)
    noise_tokens = torch.randint(2 * CLASSES, VOCAB, (n,), generator=g)  # a word that says nothing
    items = [
        {
            "path": f"p{i}/{'corrupt' if i in corrupt else 'image'}.dcm",
            "image": patterns[i % CLASSES] + 0.3 * torch.randn(1, SIZE, SIZE, generator=g),
            "heatmap": torch.rand(1, SIZE, SIZE, generator=g),
            "text": torch.tensor([i % CLASSES, CLASSES + i % CLASSES, int(noise_tokens[i])]),
        }
        for i in range(n)
    ]
    augment = RandGaussianNoised(keys="image", prob=0.5, std=0.05)
    return Dataset(items, transform=Compose([RejectCorrupt(), augment]))


def make_loader(dataset: Dataset, batch_size: int = BATCH, rank: int | None = None, **kwargs) -> DataLoader:
    """Shuffled batches that skip and count bad samples; ``rank`` shards them over 2 DDP processes."""
    dataset = SkipBadSamples(dataset)
    sampler = None if rank is None else DistributedSampler(dataset, num_replicas=2, rank=rank, seed=0)
    shuffle = sampler is None
    return DataLoader(dataset, batch_size, shuffle, sampler, collate_fn=collate_skip_bad, **kwargs)


def build(
    max_epochs: int = 4,
    *,
    n_main: int = 32,
    batch_size: int = BATCH,
    corrupt: tuple[int, ...] = (),
    mode: str = "curriculum",
    optimizer: str = "adamw",
    lr: float = 1e-2,
    clip_grad_norm: float | None = 1.0,
    handlers: tuple = (),
    resume_from: Path | None = None,
    save_to: Path | None = None,
    save_every_iterations: int | None = None,
    rank: int | None = None,
) -> SimpleNamespace:
    """A complete training setup; the curriculum spans 4 epochs of 4 iterations, cold start 2 steps."""
    torch.manual_seed(0)
    network = ToyECLIP()
    params = network.parameters()
    opt = torch.optim.AdamW(params, lr=lr) if optimizer == "adamw" else torch.optim.SGD(params, lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=16)
    curriculum = ExpertCurriculumHandler(16, cold_ratio=0.125, p_min=0.3, p_max=0.9, mode=mode, seed=1)
    setup = SimpleNamespace(network=network, optimizer=opt, scheduler=scheduler, curriculum=curriculum)
    setup.outputs = []
    setup.trainer = trainer = ECLIPTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=make_loader(make_dataset(n_main, corrupt), batch_size=batch_size, rank=rank),
        network=network if rank is None else DistributedDataParallel(network, find_unused_parameters=True),
        optimizer=opt,
        loss_function=ContrastiveLoss(),
        expert_data_loader=make_loader(make_dataset(12, seed=1), batch_size=EXPERT_BATCH, rank=rank),
        clip_grad_norm=clip_grad_norm,
        seed=3,
        train_handlers=[curriculum, LrScheduleHandler(scheduler, False, epoch_level=False), *handlers],
    )
    setup.save_dict = save_dict = checkpoint_objects(
        trainer, network=network, optimizer=opt, lr_scheduler=scheduler, curriculum=curriculum
    )
    if save_to is not None:
        every = {"save_interval": save_every_iterations or 1, "epoch_level": not save_every_iterations}
        AtomicCheckpointSaver(str(save_to), save_dict, **every).attach(trainer)
    if resume_from is not None:
        CheckpointLoader(str(resume_from), save_dict).attach(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: setup.outputs.append(e.state.output))
    return setup


def assert_same_training_state(a: SimpleNamespace, b: SimpleNamespace) -> None:
    for (name, pa), pb in zip(a.network.state_dict().items(), b.network.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert a.curriculum.state_dict() == b.curriculum.state_dict()
    assert a.trainer.expert_stream.consumed == b.trainer.expert_stream.consumed
    assert a.trainer.state.iteration == b.trainer.state.iteration


def test_iteration_output_has_the_documented_keys():
    setup = build(max_epochs=1)
    setup.trainer.run()
    assert [set(out) for out in setup.outputs] == [OUTPUT_KEYS] * 4
    last = setup.outputs[-1]
    assert last["temperature"] == pytest.approx(1 / last["logit_scale"])
    cosine = [0.5e-2 * (1 + math.cos(math.pi * step / 16)) for step in range(4)]  # the lr of each step
    assert [o["lr"] for o in setup.outputs] == pytest.approx(cosine)


def test_stats_handler_logs_the_output_and_the_curriculum(caplog, monkeypatch):
    stats = StatsHandler(name="eclip_stats", output_transform=lambda out: out)
    monkeypatch.setattr(stats.logger, "handlers", [caplog.handler])  # MONAI's logger does not propagate
    setup = build(max_epochs=1, handlers=(stats,))
    setup.trainer.run()
    iteration_lines = [r.message for r in caplog.records if "Iter:" in r.message]
    epoch_lines = [r.message for r in caplog.records if "Metrics" in r.message]
    assert len(iteration_lines) == 4 and all("loss_clip: " in line for line in iteration_lines)
    assert len(epoch_lines) == 1
    assert all(f"{key}: " in epoch_lines[0] for key in ("expert_p", "expert_batches", "curriculum_phase"))


def test_expert_batches_are_concatenated_to_the_main_batch():
    setup = build(max_epochs=1, mode="always")
    setup.trainer.run()
    sizes = [(o["n_main"], o["n_expert"], o["expert_used"]) for o in setup.outputs]
    assert sizes == [(BATCH, EXPERT_BATCH, 1)] * 4
    assert setup.network.batch_sizes == [BATCH + BATCH // 2] * 4
    assert [o["expert_batches"] for o in setup.outputs] == [1, 2, 3, 4]
    assert setup.curriculum.expert_batches == 4


def test_no_expert_batch_when_the_curriculum_is_off():
    setup = build(max_epochs=1, mode="off")
    setup.trainer.run()
    assert {(o["n_expert"], o["expert_used"]) for o in setup.outputs} == {(0, 0)}
    assert setup.network.batch_sizes == [BATCH] * 4 and setup.trainer.expert_stream.consumed == 0


def test_loss_decreases_on_a_learnable_problem():
    setup = build(max_epochs=6, mode="off", lr=5e-2)
    setup.trainer.run()
    first, last = ([o["loss_clip"] for o in setup.outputs[i : i + 4]] for i in (0, 20))
    assert sum(last) < 0.6 * sum(first)
    assert sum(o["acc_i2t"] for o in setup.outputs[20:]) > sum(o["acc_i2t"] for o in setup.outputs[:4])


@pytest.mark.parametrize("clip", [1e-3, None])
def test_gradient_clipping_bounds_the_update(clip):
    setup = build(max_epochs=1, mode="off", optimizer="sgd", lr=1.0, clip_grad_norm=clip)
    before = torch.cat([p.detach().flatten().clone() for p in setup.network.parameters()])
    setup.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda e: e.terminate())
    setup.trainer.run()
    step = (torch.cat([p.detach().flatten() for p in setup.network.parameters()]) - before).norm().item()
    grad_norm = setup.outputs[0]["grad_norm"]
    assert grad_norm > 1e-2
    assert step == pytest.approx(grad_norm if clip is None else clip, rel=1e-4)


def test_priming_term_only_during_cold_start():
    setup = build(max_epochs=1)
    setup.trainer.run()
    cold, rest = setup.outputs[:2], setup.outputs[2:]
    assert all(o["loss_prime"] > 0 for o in cold)
    for o in cold:
        assert o["loss"] == pytest.approx(0.7 * o["loss_clip"] + 0.3 * o["loss_prime"], rel=1e-5)
    assert all(o["loss_prime"] == 0 and o["loss"] == pytest.approx(o["loss_clip"]) for o in rest)


def test_corrupt_samples_are_skipped_and_counted(caplog):
    setup = build(max_epochs=2, corrupt=(5, 17, 30))
    with caplog.at_level(logging.WARNING, logger="eclip_monai.data.robust"):
        setup.trainer.run()
    assert setup.trainer.state.bad_samples == setup.outputs[-1]["bad_samples"] == 6  # 3 bad items, seen twice
    assert sum(o["n_main"] for o in setup.outputs) == 2 * (32 - 3)
    assert "p17/corrupt.dcm: PixelData: expected 64 pixels" in caplog.text


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimiser step at all
def test_batches_left_with_fewer_than_two_pairs_are_skipped_without_a_step():
    setup = build(max_epochs=1, n_main=4, batch_size=2, corrupt=(0, 1, 2), mode="off")  # 1 good item
    before = [p.detach().clone() for p in setup.network.parameters()]
    setup.trainer.run()
    assert [o["skipped"] for o in setup.outputs] == [1, 1] and sum(o["n_main"] for o in setup.outputs) == 1
    assert not any("loss" in o for o in setup.outputs) and setup.outputs[-1]["bad_samples"] == 3
    assert all(torch.equal(a, b) for a, b in zip(before, setup.network.parameters()))


def test_errors_other_than_bad_data_are_not_swallowed():
    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, index):
            raise KeyError("image")

    with pytest.raises(KeyError):
        SkipBadSamples(Broken())[0]


def test_expert_stream_resumes_with_the_same_batches_without_loading_the_skipped_ones():
    class Counting(Dataset):
        loads = 0

        def __getitem__(self, index):
            Counting.loads += 1
            return super().__getitem__(index)

    def stream() -> ExpertStream:
        source = make_dataset(12, seed=1)
        loader = make_loader(Counting(source.data, source.transform), batch_size=EXPERT_BATCH)
        return ExpertStream(loader, seed=4)

    original = stream()
    [next(original) for _ in range(7)]  # two passes of 3 batches and one batch into the third
    resumed = stream()
    resumed.load_state_dict(original.state_dict())
    Counting.loads = 0
    for _ in range(4):
        a, b = next(original), next(resumed)
        assert torch.equal(a["image"], b["image"]) and a["path"] == b["path"]
    assert Counting.loads == 2 * 4 * EXPERT_BATCH  # each stream loaded only the batches it returned


def test_passes_are_reshuffled_and_augmentation_does_not_depend_on_workers():
    single = SeededPasses(make_loader(make_dataset(16)), seed=2)
    workers = SeededPasses(make_loader(make_dataset(16), num_workers=2), seed=2)
    pass0, pass1 = list(single.iter_from(0)), list(single.iter_from(len(single)))
    assert [b["path"] for b in pass0] != [b["path"] for b in pass1]
    for a, b in zip(pass0, workers.iter_from(0)):
        assert torch.equal(a["image"], b["image"])


def test_resume_from_an_epoch_checkpoint_matches_the_uninterrupted_run(tmp_path):
    full = build()
    full.trainer.run()

    interrupted = build(save_to=tmp_path)
    interrupted.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    interrupted.trainer.run()
    resumed = build(resume_from=tmp_path / "checkpoint_epoch=2.pt")
    resumed.trainer.run()

    assert 0 < full.curriculum.expert_batches < 16  # the curriculum both injected and skipped
    assert_same_training_state(full, resumed)
    assert resumed.optimizer.param_groups[0]["lr"] == full.optimizer.param_groups[0]["lr"]
    assert [o["loss"] for o in resumed.outputs] == [o["loss"] for o in full.outputs[8:]]


def test_resume_from_a_mid_epoch_checkpoint_matches_the_uninterrupted_run(tmp_path):
    full = build(corrupt=(3,))
    full.trainer.run()

    interrupted = build(corrupt=(3,), save_to=tmp_path, save_every_iterations=3)
    interrupted.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=7), lambda e: e.terminate())
    interrupted.trainer.run()
    resumed = build(corrupt=(3,), resume_from=tmp_path / "checkpoint_iteration=6.pt")  # epoch 2, iteration 2
    resumed.trainer.run()

    assert_same_training_state(full, resumed)
    assert resumed.trainer.state.bad_samples == full.trainer.state.bad_samples == 4


def test_checkpoint_objects_add_the_state_the_trainer_owns():
    setup = build(max_epochs=1)
    expected = {"network", "optimizer", "lr_scheduler", "curriculum", "trainer", "expert_stream"}
    assert set(setup.save_dict) == expected
    assert setup.save_dict["expert_stream"] is setup.trainer.expert_stream
    assert "scaler" not in setup.save_dict  # no AMP on CPU


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    def torn_save(obj, f, **kwargs):  # a crash halfway through writing
        (f if hasattr(f, "write") else open(f, "wb")).write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    for saver in (AtomicCheckpointSaver, CheckpointSaver):
        engine = Engine(lambda e, b: None)
        saver(str(tmp_path / saver.__name__), {"net": nn.Linear(1, 1)}, save_interval=1).attach(engine)
        with pytest.raises(OSError, match="disk full"):
            engine.run([0])
    assert list((tmp_path / "AtomicCheckpointSaver").iterdir()) == []
    torn = list((tmp_path / "CheckpointSaver").iterdir())  # what MONAI's own saver leaves behind
    assert [p.read_bytes() for p in torn] == [b"half a checkpoint"]


def _launch(*args: object) -> subprocess.Popen:
    """Run this file's ``__main__`` in a fresh interpreter."""
    command = [sys.executable, __file__, *map(str, args)]
    return subprocess.Popen(command, env=os.environ | {"OMP_NUM_THREADS": "1"})


def _train_ddp(rank: str, init_file: str, result: str) -> None:
    """Rank ``rank`` of 2 gloo processes; the corrupt items land on one rank's batches only."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=int(rank), world_size=2)
    setup = build(corrupt=(3, 10), rank=int(rank))
    setup.trainer.run()
    state = {"weights": setup.network.state_dict(), "bad_samples": setup.trainer.state.bad_samples}
    torch.save(state | {"n_main": [o["n_main"] for o in setup.outputs]}, result)
    dist.destroy_process_group()


def test_ddp_ranks_with_different_bad_samples_train_in_step(tmp_path):
    ranks = [_launch("ddp", rank, tmp_path / "init", tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert [rank.wait(timeout=300) for rank in ranks] == [0, 0]
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert all(torch.equal(v, rank1["weights"][k]) for k, v in rank0["weights"].items())
    assert rank0["bad_samples"] + rank1["bad_samples"] == 2 * 4  # 2 corrupt items, 4 epochs
    assert rank0["n_main"] == rank1["n_main"] and min(rank0["n_main"]) < BATCH  # trimmed to the smaller batch


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"ddp": _train_ddp}[sys.argv[1]](*sys.argv[2:])
