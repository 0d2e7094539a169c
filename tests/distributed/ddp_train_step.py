"""One eCLIP training step on a fixed global batch, run under ``torchrun`` (gloo, CPU) or as one process.

Each of W ranks trains on its contiguous 1/W of the global main and expert batches; the result (loss of the
step and the parameters after one plain SGD step, lr 1, so that parameter change = averaged gradient) is saved by
rank 0 for ``tests/test_distributed.py`` to compare against the single-process run.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from eclip_monai.data.robust import collate_skip_bad
from eclip_monai.engines import ECLIPTrainer
from eclip_monai.handlers import ExpertCurriculumHandler
from eclip_monai.losses import ContrastiveLoss
from eclip_monai.networks import build_eclip

MAIN, EXPERT, SIZE, CONTEXT = 8, 4, 32, 16
TINY = {"embed_dim": 32, "vision_cfg": {"width": 64, "layers": 1, "head_width": 32, "patch_size": 16},
        "text_cfg": {"width": 32, "heads": 2, "layers": 1, "context_length": CONTEXT}}


def global_batches():
    g = torch.Generator().manual_seed(1234)
    main = [{"image": torch.rand(1, SIZE, SIZE, generator=g), "text": torch.randint(1, 400, (CONTEXT,), generator=g)}
            for _ in range(MAIN)]
    expert = [{"image": torch.rand(1, SIZE, SIZE, generator=g), "heatmap": torch.rand(1, SIZE, SIZE, generator=g),
               "text": torch.randint(1, 400, (CONTEXT,), generator=g)} for _ in range(EXPERT)]
    return main, expert


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    torch.manual_seed(0)
    net = build_eclip(model_name="eclip-tiny", model_cfg=TINY, image_size=SIZE, hp_dim=32, hp_heads=2, mixup=False)
    network = torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True) if distributed else net
    main_items, expert_items = global_batches()
    m, e = MAIN // world, EXPERT // world
    loader = DataLoader(main_items[rank * m:(rank + 1) * m], batch_size=m, collate_fn=collate_skip_bad)
    expert_loader = DataLoader(expert_items[rank * e:(rank + 1) * e], batch_size=e, collate_fn=collate_skip_bad)
    trainer = ECLIPTrainer(
        device="cpu", max_epochs=1, train_data_loader=loader, expert_data_loader=expert_loader, network=network,
        optimizer=torch.optim.SGD(net.parameters(), lr=1.0), loss_function=ContrastiveLoss(), clip_grad_norm=None,
        train_handlers=[ExpertCurriculumHandler(max_steps=1, mode="always", priming=False)],
    )
    before = {k: v.detach().clone() for k, v in net.state_dict().items()}
    trainer.run()
    if rank == 0:
        delta = {k: (before[k] - v).float() for k, v in net.state_dict().items() if v.is_floating_point()}
        torch.save({"loss": float(trainer.state.output["loss"]), "n_expert": trainer.state.output["n_expert"],
                    "world": world, "delta": delta}, args.out)
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
