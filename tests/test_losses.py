"""Contrastive and priming losses, including the contrastive loss under a real 2-process gloo group."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from eclip_monai.losses import ContrastiveLoss, PrimingLoss, batch_retrieval_accuracy
from eclip_monai.networks import HeatmapProcessor
from label_server import free_port



def test_loss_equals_hand_computed_symmetric_cross_entropy_on_3_pairs():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[0.8, 0.6], [1.0, 0.0], [-0.6, 0.8]]), dim=-1)
    scale = 2.5
    cos = [[sum(a * b for a, b in zip(i, t)) for t in text.tolist()] for i in image.tolist()]

    def mean_nll(rows):  # -log softmax(scale * row)[i] for the matching column i, averaged over rows
        nll = [math.log(sum(math.exp(scale * c) for c in row)) - scale * row[i] for i, row in enumerate(rows)]
        return sum(nll) / len(nll)

    expected = (mean_nll(cos) + mean_nll([list(col) for col in zip(*cos)])) / 2
    loss = ContrastiveLoss()(image, text, torch.tensor(scale))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_aligned_embeddings_with_a_large_scale_give_zero_loss_and_perfect_accuracy():
    features = torch.eye(4)
    loss = ContrastiveLoss()(features, features.clone(), torch.tensor(100.0))
    assert loss.item() < 1e-6
    assert [acc.item() for acc in batch_retrieval_accuracy(features, features)] == [1.0, 1.0]


def test_retrieval_accuracy_counts_each_direction_separately():
    similarity = torch.tensor([[0.9, 0.8, 0.0], [0.95, 0.5, 0.1], [0.0, 0.2, 0.7]])
    # rows (image->text) pick 0, 0, 2: 2 of 3 right; columns (text->image) pick 1, 0, 2: 1 of 3 right
    i2t, t2i = batch_retrieval_accuracy(torch.eye(3), similarity.T)
    assert i2t.item() == pytest.approx(2 / 3) and t2i.item() == pytest.approx(1 / 3)
    assert not i2t.requires_grad


def test_gradient_reaches_both_towers_and_the_temperature():
    torch.manual_seed(0)
    image_tower, text_tower = nn.Linear(6, 4), nn.Linear(5, 4)
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    loss = ContrastiveLoss()(
        F.normalize(image_tower(torch.randn(8, 6)), dim=-1),
        F.normalize(text_tower(torch.randn(8, 5)), dim=-1),
        log_scale.exp(),
    )
    loss.backward()
    for param in (*image_tower.parameters(), *text_tower.parameters(), log_scale):
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_priming_teaches_the_processor_the_identity():
    torch.manual_seed(0)
    processor = HeatmapProcessor()
    optimiser = torch.optim.Adam(processor.parameters(), lr=1e-3)
    priming = PrimingLoss()

    def smooth_images(n: int) -> torch.Tensor:  # random low-frequency images, like anatomy at this scale
        return F.interpolate(torch.randn(n, 1, 4, 4), size=(32, 32), mode="bilinear", align_corners=False)

    held_out = smooth_images(16)
    with torch.no_grad():
        before = priming(processor(held_out, torch.ones_like(held_out)), held_out).item()
    for _ in range(80):
        image = smooth_images(8)
        loss = priming(processor(image, torch.ones_like(image)), image)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        after = priming(processor(held_out, torch.ones_like(held_out)), held_out).item()
    assert after < 0.3 * before


# ---- distributed ------------------------------------------------------------------------------------------

WORLD_SIZE, ROWS_PER_RANK = 2, 4


class _Towers(nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.text = nn.Linear(6, 4), nn.Linear(5, 4)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, image, text):
        return F.normalize(self.image(image), dim=-1), F.normalize(self.text(text), dim=-1), self.log_scale.exp()


def _global_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    rows = WORLD_SIZE * ROWS_PER_RANK
    return torch.randn(rows, 6, generator=generator), torch.randn(rows, 5, generator=generator)


def _new_towers() -> _Towers:
    torch.manual_seed(0)
    return _Towers()


def _ddp_worker(rank: int, port: int, results: dict) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE,
        timeout=timedelta(seconds=60),
    )
    torch.set_num_threads(1)
    image, text = _global_batch()
    shard = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    for local_loss in (False, True):
        model = nn.parallel.DistributedDataParallel(_new_towers())
        loss = ContrastiveLoss(local_loss=local_loss)(*model(image[shard], text[shard]))
        loss.backward()  # DDP averages parameter gradients over ranks
        grads = {name: param.grad.clone() for name, param in model.module.named_parameters()}
        results[(rank, local_loss)] = (loss.item(), grads)
    dist.destroy_process_group()


def test_distributed_loss_and_gradients_equal_the_single_process_full_batch():
    reference = _new_towers()
    expected_loss = ContrastiveLoss()(*reference(*_global_batch()))
    expected_loss.backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(free_port(), results), nprocs=WORLD_SIZE, join=True)
        results = dict(results)
    for local_loss in (False, True):
        losses = [results[(rank, local_loss)][0] for rank in range(WORLD_SIZE)]
        if local_loss:  # each rank scores its own rows; their mean is the global loss
            assert sum(losses) / WORLD_SIZE == pytest.approx(expected_loss.item(), rel=1e-5)
        else:
            assert losses == pytest.approx([expected_loss.item()] * WORLD_SIZE, rel=1e-5)
        for rank in range(WORLD_SIZE):
            grads = results[(rank, local_loss)][1]
            for name, param in reference.named_parameters():
                torch.testing.assert_close(grads[name], param.grad, rtol=1e-5, atol=1e-6)
