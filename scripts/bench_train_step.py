"""Benchmark the training step: ``ECLIPTrainer`` vs a plain open_clip loop, and eCLIP with expert batches.

    python scripts/bench_train_step.py                  # eclip-tiny ViT at 224², batch 32, CPU
    python scripts/bench_train_step.py --quick          # 112², fewer rounds
    python scripts/bench_train_step.py --device cuda    # AMP (bf16) on the GPU, vs a large bf16 matmul
    python scripts/bench_train_step.py --json train_step.json

Contenders, all on the same towers, batch, optimiser (AdamW, two weight-decay groups), WarmupCosine schedule
and gradient clipping at 1.0, fed the same batches already in memory:

- ``plain_open_clip``: the reference, a hand loop over an open_clip model (no MONAI, no Ignite):
  zero_grad, forward, ``open_clip.loss.ClipLoss``, backward, clip, step, schedule, clamp the temperature.
- ``clip_baseline``: ``ECLIPTrainer`` over ``build_eclip(experts=False)``, curriculum handler off.
- ``eclip_no_expert``: ``build_eclip(experts=True)`` on a step that draws no expert batch.
- ``eclip_expert``: the same with an expert batch of B/2 (heatmap processor, mixup, B + B/2 pairs).
- ``eclip_priming``: a cold-start step: no expert batch, priming loss MSE(I, HP(I, 1)).

Each contender runs ``--steps`` steps per round after a warm-up; rounds are interleaved and the median step
time is reported. FLOPs of one step (forward + backward) are counted with ``FlopCounterMode``, giving each
step's achieved FLOP/s as a fraction of a large matrix multiply timed in the same run.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable

import bench_common as bc
import torch
from monai.data import MetaTensor
from monai.handlers import LrScheduleHandler
from monai.optimizers import WarmupCosineSchedule
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from eclip_monai.engines import ECLIPTrainer
from eclip_monai.handlers import ExpertCurriculumHandler
from eclip_monai.losses import ContrastiveLoss
from eclip_monai.networks import build_eclip

CONTENDERS = ("plain_open_clip", "clip_baseline", "eclip_no_expert", "eclip_expert", "eclip_priming")
SCHEDULE_STEPS = 10**6  # a long schedule: the LR stays in warm-up, the curriculum in its cold start


def make_batches(count: int, batch: int, size: int, context: int, device: torch.device, seed: int):
    """``count`` batches of 1-channel images and random token rows ending in an end-of-text token."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        text = torch.randint(1, 49406, (batch, context), generator=g)
        text[:, -1] = 49407  # open_clip pools the text tower at the highest token id
        out.append(
            {"image": torch.randn(batch, 1, size, size, generator=g).to(device), "text": text.to(device)}
        )
    return out


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def expert_loader(batch: int, size: int, context: int, seed: int) -> DataLoader:
    """Expert samples (image, gaze-like heatmap, text) in memory; ``ExpertStream`` needs a DataLoader."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(4 * batch):
        heat = torch.rand(1, size // 8, size // 8, generator=g)
        heat = torch.nn.functional.interpolate(heat[None], size=(size, size), mode="bilinear")[0]
        text = torch.randint(1, 49406, (context,), generator=g)
        text[-1] = 49407
        items.append(
            {"image": torch.randn(1, size, size, generator=g), "heatmap": heat / heat.max(), "text": text}
        )
    return DataLoader(_ListDataset(items), batch_size=batch, shuffle=True, drop_last=True)


def _optimizer(model: torch.nn.Module, lr: float = 1e-4, wd: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW with open_clip's two groups: no decay on gains, biases, embeddings and the temperature."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(lr, wd)
    else:
        exclude = lambda n, p: (
            p.ndim < 2 or any(s in n for s in ("bn", "ln", "bias", "logit_scale", "embedding"))
        )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": wd},
        ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=wd)


class PlainStep:
    """The reference: open_clip's own training loop reduced to its step (``open_clip_train.train``)."""

    def __init__(self, args, device, batches):
        torch.manual_seed(args.seed)
        self.model = build_eclip(args.model, image_size=args.image_size, experts=False).clip.to(device)
        self.optimizer = _optimizer(self.model)
        self.scheduler = WarmupCosineSchedule(
            self.optimizer, warmup_steps=SCHEDULE_STEPS // 10, t_total=SCHEDULE_STEPS
        )
        self.loss = ClipLoss()
        self.batches, self.amp, self.device = batches, args.amp, device
        self.position = 0

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            self.step(batch["image"], batch["text"])

    def step(self, image, text) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            image_features = torch.nn.functional.normalize(self.model.encode_image(image), dim=-1)
            text_features = torch.nn.functional.normalize(self.model.encode_text(text), dim=-1)
            loss = self.loss(image_features, text_features, self.model.logit_scale.exp())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0, math.log(100))


class TrainerStep:
    """``ECLIPTrainer`` as the bundle builds it, run for ``steps`` iterations per call."""

    def __init__(self, args, device, batches, experts: bool, mode: str, priming: bool):
        torch.manual_seed(args.seed)
        self.network = build_eclip(args.model, image_size=args.image_size, experts=experts).to(device)
        optimizer = _optimizer(self.network)
        scheduler = WarmupCosineSchedule(optimizer, warmup_steps=SCHEDULE_STEPS // 10, t_total=SCHEDULE_STEPS)
        # the loaders hand over MetaTensors; the trainer strips the metadata
        self.batches = [{"image": MetaTensor(b["image"]), "text": b["text"]} for b in batches]
        experts_in = None
        if experts:
            experts_in = expert_loader(args.expert_batch, args.image_size, args.context_length, args.seed)
        self.trainer = ECLIPTrainer(
            device=device,
            max_epochs=1,
            train_data_loader=self.batches,
            network=self.network,
            optimizer=optimizer,
            loss_function=ContrastiveLoss(),
            expert_data_loader=experts_in,
            clip_grad_norm=1.0,
            seed=args.seed,
            amp=args.amp,
            amp_kwargs={"dtype": torch.bfloat16} if args.amp else None,
            train_handlers=[
                LrScheduleHandler(scheduler, epoch_level=False, print_lr=False),
                ExpertCurriculumHandler(max_steps=SCHEDULE_STEPS, mode=mode, priming=priming, seed=args.seed),
            ],
        )
        self.trainer.logger.setLevel(logging.WARNING)

    def __call__(self, steps: int) -> None:
        self.trainer.data_loader = self.batches[:steps]
        self.trainer.state.max_epochs = None  # a fresh Ignite run of ``steps`` iterations
        self.trainer.run()


def build_contenders(args, device) -> dict[str, Callable[[int], None]]:
    batches = make_batches(
        max(args.steps, args.warmup, 1), args.batch, args.image_size, args.context_length, device, args.seed
    )
    made = {
        "plain_open_clip": lambda: PlainStep(args, device, batches),
        "clip_baseline": lambda: TrainerStep(args, device, batches, experts=False, mode="off", priming=False),
        "eclip_no_expert": lambda: TrainerStep(
            args, device, batches, experts=True, mode="off", priming=False
        ),
        "eclip_expert": lambda: TrainerStep(
            args, device, batches, experts=True, mode="always", priming=False
        ),
        "eclip_priming": lambda: TrainerStep(args, device, batches, experts=True, mode="off", priming=True),
    }
    return {name: made[name]() for name in args.contenders}


class _ToyCLIP(torch.nn.Module):
    """The ``ECLIP`` contract with two linear towers: a step costs about a millisecond of compute, so what
    an engine adds per step is not lost in the noise of a real step."""

    has_experts = False

    def __init__(self, pixels: int = 64, vocab: int = 64, dim: int = 32):
        super().__init__()
        self.image_proj = torch.nn.Linear(pixels, dim, bias=False)
        self.text_embed = torch.nn.EmbeddingBag(vocab, dim)
        self.log_scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())

    def forward(self, image, text, expert_image=None, expert_heatmap=None, prime=False):
        return {
            "image_features": torch.nn.functional.normalize(self.image_proj(image.flatten(1)), dim=-1),
            "text_features": torch.nn.functional.normalize(self.text_embed(text), dim=-1),
            "logit_scale": self.log_scale.clamp(max=math.log(100)).exp(),
        }


def engine_overhead(args, device, steps: int = 100) -> dict:
    """Milliseconds per step that ``ECLIPTrainer`` (Ignite events, handlers, reseeding, logged outputs) adds
    to a hand loop doing the same forward / loss / backward / clip / step / schedule on a toy network."""
    g = torch.Generator().manual_seed(args.seed)
    batches = [
        {
            "image": torch.randn(16, 1, 8, 8, generator=g).to(device),
            "text": torch.randint(0, 64, (16, 4), generator=g).to(device),
        }
        for _ in range(steps)
    ]

    def setup():
        torch.manual_seed(args.seed)
        net = _ToyCLIP().to(device)
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.98))
        return net, opt, WarmupCosineSchedule(opt, warmup_steps=SCHEDULE_STEPS // 10, t_total=SCHEDULE_STEPS)

    net, opt, sched = setup()
    loss = ClipLoss()

    def plain():
        for batch in batches:
            opt.zero_grad(set_to_none=True)
            out = net(batch["image"], batch["text"])
            loss(out["image_features"], out["text_features"], out["logit_scale"]).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()

    t_net, t_opt, t_sched = setup()
    trainer = ECLIPTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=[{"image": MetaTensor(b["image"]), "text": b["text"]} for b in batches],
        network=t_net,
        optimizer=t_opt,
        loss_function=ContrastiveLoss(),
        clip_grad_norm=1.0,
        seed=args.seed,
        train_handlers=[
            LrScheduleHandler(t_sched, epoch_level=False, print_lr=False),
            ExpertCurriculumHandler(max_steps=SCHEDULE_STEPS, mode="off", priming=False),
        ],
    )
    trainer.logger.setLevel(logging.WARNING)

    def engine():
        trainer.state.max_epochs = None
        trainer.run()

    plain(), engine()
    times = bc.interleaved_rounds({"plain": plain, "trainer": engine}, max(3, args.rounds), device)
    plain_ms, trainer_ms = (1e3 * bc.median(times[n]) / steps for n in ("plain", "trainer"))
    return {
        "toy_steps_per_round": steps,
        "plain_ms_per_step": plain_ms,
        "trainer_ms_per_step": trainer_ms,
        "overhead_ms_per_step": trainer_ms - plain_ms,
    }


def count_flops(contender, steps: int = 1) -> int:
    """FLOPs of ``steps`` steps (forward, backward and optimiser), as torch's FLOP counter sees them."""
    with FlopCounterMode(display=False) as counter:
        contender(steps)
    return int(counter.get_total_flops()) // steps


def run(args: argparse.Namespace) -> dict:
    device, skipped = bc.resolve_device(args.device)
    config = {k: v for k, v in vars(args).items() if k not in ("json",)}
    if device is None:
        bc.log(skipped)
        return {"config": config, "skipped": skipped}
    if args.threads:
        torch.set_num_threads(args.threads)
    args.amp = device.type == "cuda" and not args.no_amp
    dtype = torch.bfloat16 if args.amp else torch.float32
    bc.log(
        f"training step on {device}: {args.model} at {args.image_size}², batch {args.batch}, expert batch "
        f"{args.expert_batch}, {torch.get_num_threads()} thread(s), amp={'bf16' if args.amp else 'off'}"
    )
    contenders = build_contenders(args, device)
    flops = {}
    for name, contender in contenders.items():
        contender(args.warmup)  # warm-up: allocator, kernels, optimiser state
        flops[name] = count_flops(contender)
    peak_before = bc.matmul_flops_per_s(args.matmul_size, dtype, device)
    times = bc.interleaved_rounds(
        {n: (lambda c=c: c(args.steps)) for n, c in contenders.items()}, args.rounds, device, progress=bc.log
    )
    peak_after = bc.matmul_flops_per_s(args.matmul_size, dtype, device)
    peak = max(peak_before, peak_after)
    steps = {}
    for name in contenders:
        per_step = [t / args.steps for t in times[name]]
        med = bc.median(per_step)
        images = args.batch + (args.expert_batch if name == "eclip_expert" else 0)
        steps[name] = {
            "median_step_s": med,
            "rounds_step_s": per_step,
            "images_per_step": images,
            "images_per_s": args.batch / med,
            "gflop_per_step": flops[name] / 1e9,
            "achieved_gflop_per_s": flops[name] / med / 1e9,
            "fraction_of_matmul_peak": flops[name] / med / peak,
        }
    result = {
        "config": config,
        "device": str(device),
        "reference_matmul": {
            "size": args.matmul_size,
            "dtype": str(dtype).replace("torch.", ""),
            "gflop_per_s": peak / 1e9,
            "gflop_per_s_before": peak_before / 1e9,
            "gflop_per_s_after": peak_after / 1e9,
        },
        "steps": steps,
        "ratios": {},
        "targets": {},
    }
    if "plain_open_clip" in steps and "clip_baseline" in steps:
        ratio = steps["plain_open_clip"]["median_step_s"] / steps["clip_baseline"]["median_step_s"]
        result["ratios"]["clip_baseline_throughput_vs_plain_open_clip"] = ratio
        result["targets"]["clip_baseline_vs_plain"] = bc.target(
            ratio, 0.95, ">=", "CLIP-baseline step throughput / plain open_clip step throughput"
        )
    if "eclip_expert" in steps and "clip_baseline" in steps:
        ratio = steps["eclip_expert"]["median_step_s"] / steps["clip_baseline"]["median_step_s"]
        result["ratios"]["eclip_expert_cost_vs_clip_baseline"] = ratio
        result["targets"]["eclip_expert_vs_clip"] = bc.target(
            ratio, 1.6, "<=", "eCLIP step with expert batch B/2 / CLIP-baseline step (time)"
        )
    for name in ("eclip_no_expert", "eclip_priming"):
        if name in steps and "clip_baseline" in steps:
            result["ratios"][f"{name}_cost_vs_clip_baseline"] = (
                steps[name]["median_step_s"] / steps["clip_baseline"]["median_step_s"]
            )
    result["engine_overhead"] = engine_overhead(args, device)
    if "clip_baseline" in steps:
        result["engine_overhead"]["share_of_clip_step"] = (
            result["engine_overhead"]["overhead_ms_per_step"] / 1e3 / steps["clip_baseline"]["median_step_s"]
        )
    print_table(result)
    return result


def print_table(result: dict) -> None:
    peak = result["reference_matmul"]
    rows = []
    base = result["steps"].get("plain_open_clip", {}).get("median_step_s")
    for name, s in result["steps"].items():
        rows.append(
            [
                name,
                f"{s['median_step_s'] * 1e3:.1f}",
                f"{s['images_per_s']:.1f}",
                f"{s['gflop_per_step']:.1f}",
                f"{s['achieved_gflop_per_s']:.1f}",
                f"{100 * s['fraction_of_matmul_peak']:.1f} %",
                f"{base / s['median_step_s']:.3f}x" if base else "-",
            ]
        )
    print(
        bc.format_table(
            rows,
            [
                "step",
                "median ms",
                "main images/s",
                "GFLOP/step",
                "GFLOP/s",
                f"of {peak['size']}² {peak['dtype']} matmul ({peak['gflop_per_s']:.0f} GFLOP/s)",
                "throughput vs plain_open_clip",
            ],
        )
    )
    o = result.get("engine_overhead")
    if o:
        print(
            f"engine overhead on a toy network: trainer {o['trainer_ms_per_step']:.2f} ms/step vs hand loop "
            f"{o['plain_ms_per_step']:.2f} ms/step: {o['overhead_ms_per_step']:+.2f} ms per step"
            + (
                f" ({100 * o['share_of_clip_step']:.2f} % of the CLIP step)"
                if "share_of_clip_step" in o
                else ""
            )
        )
    bc.print_targets(result["targets"])


def parser() -> argparse.ArgumentParser:
    p = bc.script_parser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (skipped with a note when CUDA is absent)")
    p.add_argument(
        "--model",
        default="eclip-tiny",
        help="open_clip config of the towers (eclip-tiny, eclip-tiny-cnn, ...)",
    )
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--expert-batch", type=int, default=None, help="default batch // 2")
    p.add_argument(
        "--context-length", type=int, default=77, help="token rows per text (the text tower's length)"
    )
    p.add_argument("--steps", type=int, default=3, help="steps per contender per round")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the reference matmul")
    p.add_argument("--contenders", nargs="+", default=list(CONTENDERS), choices=CONTENDERS)
    p.add_argument("--no-amp", action="store_true", help="on CUDA, run in float32 instead of bf16 autocast")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="112², 2 steps x 5 rounds")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.image_size, args.steps, args.rounds = min(args.image_size, 112), 2, 5
    if args.expert_batch is None:
        args.expert_batch = max(2, args.batch // 2)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    bc.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
