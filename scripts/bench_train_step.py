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
step's achieved FLOP/s as a fraction of a large matrix multiply timed in the same run. The engine's own cost
per step is timed apart, the same hand loop against ``ECLIPTrainer`` on a toy network (``engine_overhead``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, replace

import bench_common as bc
import torch
import torch.nn.functional as F
from monai.data import Dataset, MetaTensor
from monai.handlers import LrScheduleHandler
from monai.optimizers import WarmupCosineSchedule
from open_clip.loss import ClipLoss
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from eclip_monai.engines import ECLIPTrainer
from eclip_monai.handlers import ExpertCurriculumHandler
from eclip_monai.losses import ContrastiveLoss
from eclip_monai.networks import build_eclip

SCHEDULE_STEPS = 10**6  # a long schedule: the LR stays in warm-up, the curriculum in its cold start
END_OF_TEXT = 49407  # open_clip pools the text tower at the highest token id
RATIOS = {  # name: (numerator, denominator) of median step times
    "clip_baseline_throughput_vs_plain_open_clip": ("plain_open_clip", "clip_baseline"),
    "eclip_expert_cost_vs_clip_baseline": ("eclip_expert", "clip_baseline"),
    "eclip_no_expert_cost_vs_clip_baseline": ("eclip_no_expert", "clip_baseline"),
    "eclip_priming_cost_vs_clip_baseline": ("eclip_priming", "clip_baseline"),
}
TARGETS = {  # name: (ratio, threshold, comparison, what it measures)
    "clip_baseline_vs_plain": ("clip_baseline_throughput_vs_plain_open_clip", 0.95, ">=",
                               "CLIP-baseline step throughput / plain open_clip step throughput"),
    "eclip_expert_vs_clip": ("eclip_expert_cost_vs_clip_baseline", 1.6, "<=",
                             "eCLIP step with expert batch B/2 / CLIP-baseline step (time)"),
}


def _tokens(shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    text = torch.randint(1, END_OF_TEXT - 1, shape, generator=g)
    text[..., -1] = END_OF_TEXT
    return text


def make_batches(count: int, batch: int, size: int, context: int, device, seed: int) -> list[dict]:
    """``count`` batches of 1-channel images and random token rows ending in an end-of-text token."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randn(batch, 1, size, size, generator=g).to(device),
             "text": _tokens((batch, context), g).to(device)} for _ in range(count)]


def expert_loader(batch: int, size: int, context: int, seed: int) -> DataLoader:
    """Expert samples (image, gaze-like heatmap, text) in memory; ``ExpertStream`` needs a DataLoader."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(4 * batch):
        heat = F.interpolate(torch.rand(1, 1, size // 8, size // 8, generator=g), size=(size, size),
                             mode="bilinear")[0]
        text, image = _tokens((context,), g), torch.randn(1, size, size, generator=g)
        items.append({"image": image, "heatmap": heat / heat.max(), "text": text})
    return DataLoader(Dataset(items), batch_size=batch, shuffle=True, drop_last=True)


def _optimizer(model: torch.nn.Module, lr: float = 1e-4, wd: float = 1e-3) -> torch.optim.Optimizer:
    """AdamW with open_clip's two groups: no decay on gains, biases, embeddings and the temperature."""
    if hasattr(model, "param_groups"):
        groups = model.param_groups(lr, wd)
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        exempt = {n for n, p in named
                  if p.ndim < 2 or any(s in n for s in ("bn", "ln", "bias", "logit_scale", "embedding"))}
        groups = [{"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
                  {"params": [p for n, p in named if n not in exempt], "weight_decay": wd}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), weight_decay=wd)


def _schedule(optimizer: torch.optim.Optimizer) -> WarmupCosineSchedule:
    return WarmupCosineSchedule(optimizer, warmup_steps=SCHEDULE_STEPS // 10, t_total=SCHEDULE_STEPS)


class PlainStep:
    """The reference: open_clip's own training loop reduced to its step (``open_clip_train.train``), over any
    model with open_clip's ``encode_image`` / ``encode_text`` / ``logit_scale``; ``steps`` steps a call."""

    def __init__(self, model: torch.nn.Module, batches: list[dict], amp: bool):
        self.model, self.batches, self.amp, self.position = model, batches, amp, 0
        self.optimizer = _optimizer(model)
        self.scheduler, self.loss = _schedule(self.optimizer), ClipLoss()

    def __call__(self, steps: int) -> None:
        for _ in range(steps):
            batch = self.batches[self.position % len(self.batches)]
            self.position += 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(batch["image"].device.type, dtype=torch.bfloat16, enabled=self.amp):
                image = F.normalize(self.model.encode_image(batch["image"]), dim=-1)
                text = F.normalize(self.model.encode_text(batch["text"]), dim=-1)
                loss = self.loss(image, text, self.model.logit_scale.exp())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.optimizer.step()
            self.scheduler.step()
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(100))


class TrainerStep:
    """``ECLIPTrainer`` as the bundle builds it (LR schedule and curriculum handlers); ``steps`` iterations a
    call, each call a fresh Ignite run."""

    def __init__(self, network, batches, seed: int, amp: bool, experts=None, mode="off", priming=False):
        optimizer = _optimizer(network)
        # the loaders hand over MetaTensors; the trainer strips the metadata
        self.batches = [{"image": MetaTensor(b["image"]), "text": b["text"]} for b in batches]
        self.trainer = ECLIPTrainer(
            device=batches[0]["image"].device, max_epochs=1, train_data_loader=self.batches, network=network,
            optimizer=optimizer, loss_function=ContrastiveLoss(), expert_data_loader=experts, seed=seed,
            clip_grad_norm=1.0, amp=amp, amp_kwargs={"dtype": torch.bfloat16} if amp else None,
            train_handlers=[
                LrScheduleHandler(_schedule(optimizer), epoch_level=False, print_lr=False),
                ExpertCurriculumHandler(max_steps=SCHEDULE_STEPS, mode=mode, priming=priming, seed=seed),
            ],
        )
        self.trainer.logger.setLevel(logging.WARNING)

    def __call__(self, steps: int) -> None:
        self.trainer.data_loader = self.batches[:steps]
        self.trainer.state.max_epochs = None
        self.trainer.run()


def build_contenders(cfg: bc.TrainStepConfig, device, amp: bool) -> dict[str, Callable[[int], None]]:
    """The contenders named in ``cfg.contenders``, on the same batches (``cfg.expert_batch`` must be set)."""
    count = max(cfg.steps, cfg.warmup, 1)
    batches = make_batches(count, cfg.batch, cfg.image_size, cfg.context_length, device, cfg.seed)

    def network(experts: bool):
        torch.manual_seed(cfg.seed)
        return build_eclip(cfg.model, image_size=cfg.image_size, experts=experts).to(device)

    def trainer(experts=True, mode="off", priming=False):
        stream = None
        if experts:
            stream = expert_loader(cfg.expert_batch, cfg.image_size, cfg.context_length, cfg.seed)
        return TrainerStep(network(experts), batches, cfg.seed, amp, stream, mode, priming)

    made = {
        "plain_open_clip": lambda: PlainStep(network(False).clip, batches, amp),
        "clip_baseline": lambda: trainer(experts=False),
        "eclip_no_expert": lambda: trainer(),
        "eclip_expert": lambda: trainer(mode="always"),
        "eclip_priming": lambda: trainer(priming=True),
    }
    return {name: made[name]() for name in cfg.contenders}


class _ToyCLIP(torch.nn.Module):
    """Two linear towers behind both contracts (open_clip's for ``PlainStep``, ``ECLIP``'s forward for the
    trainer): a step costs about a millisecond, so what an engine adds per step is not lost in the noise."""

    has_experts = False

    def __init__(self, pixels: int = 64, vocab: int = 64, dim: int = 32):
        super().__init__()
        self.image_proj = torch.nn.Linear(pixels, dim, bias=False)
        self.text_embed = torch.nn.EmbeddingBag(vocab, dim)
        self.logit_scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())

    def encode_image(self, image):
        return self.image_proj(image.flatten(1))

    def encode_text(self, text):
        return self.text_embed(text)

    def forward(self, image, text, expert_image=None, expert_heatmap=None, prime=False):
        return {"image_features": F.normalize(self.encode_image(image), dim=-1),
                "text_features": F.normalize(self.encode_text(text), dim=-1),
                "logit_scale": self.logit_scale.clamp(max=math.log(100)).exp()}


def engine_overhead(cfg: bc.TrainStepConfig, device: torch.device, steps: int = 100) -> dict:
    """Milliseconds per step that ``ECLIPTrainer`` (Ignite events, handlers, reseeding, logged outputs) adds
    to the hand loop doing the same forward / loss / backward / clip / step / schedule, on the toy network."""
    g = torch.Generator().manual_seed(cfg.seed)
    batches = [{"image": torch.randn(16, 1, 8, 8, generator=g).to(device),
                "text": torch.randint(0, 64, (16, 4), generator=g).to(device)} for _ in range(steps)]
    torch.manual_seed(cfg.seed)
    plain = PlainStep(_ToyCLIP().to(device), batches, amp=False)
    torch.manual_seed(cfg.seed)
    trainer = TrainerStep(_ToyCLIP().to(device), batches, cfg.seed, amp=False)
    contenders = {"plain": lambda: plain(steps), "trainer": lambda: trainer(steps)}
    times = bc.interleaved_rounds(contenders, max(3, cfg.rounds), device, warmup=True)
    plain_ms, trainer_ms = (1e3 * bc.median(times[n]) / steps for n in contenders)
    return {"toy_steps_per_round": steps, "plain_ms_per_step": plain_ms, "trainer_ms_per_step": trainer_ms,
            "overhead_ms_per_step": trainer_ms - plain_ms}


def run(cfg: bc.TrainStepConfig) -> dict:
    cfg = replace(cfg, expert_batch=cfg.expert_batch or max(2, cfg.batch // 2))
    device, amp, skipped = bc.prepare_device(cfg)
    if skipped:
        return {"config": asdict(cfg), "skipped": skipped}
    dtype = torch.bfloat16 if amp else torch.float32
    bc.log(f"training step on {device}: {cfg.model} at {cfg.image_size}², batch {cfg.batch}, expert batch "
           f"{cfg.expert_batch}, {torch.get_num_threads()} thread(s), amp={'bf16' if amp else 'off'}")
    contenders = build_contenders(cfg, device, amp)
    flops = {}
    for name, contender in contenders.items():
        contender(cfg.warmup)  # warm-up: allocator, kernels, optimiser state
        with FlopCounterMode(display=False) as counter:
            contender(1)
        flops[name] = counter.get_total_flops()
    before = bc.matmul_peak(cfg.matmul_size, dtype, device)
    times = bc.interleaved_rounds({n: (lambda c=c: c(cfg.steps)) for n, c in contenders.items()}, cfg.rounds,
                                  device, progress=bc.log)
    after = bc.matmul_peak(cfg.matmul_size, dtype, device)
    peak = {**max(before, after, key=lambda m: m["gflop_per_s"]),
            "gflop_per_s_before": before["gflop_per_s"], "gflop_per_s_after": after["gflop_per_s"]}
    steps = {}
    for name in contenders:
        per_step = [t / cfg.steps for t in times[name]]
        med, gflop = bc.median(per_step), flops[name] / 1e9
        steps[name] = {
            "median_step_s": med, "rounds_step_s": per_step,
            "images_per_step": cfg.batch + (cfg.expert_batch if name == "eclip_expert" else 0),
            "images_per_s": cfg.batch / med, "gflop_per_step": gflop, "achieved_gflop_per_s": gflop / med,
            "fraction_of_matmul_peak": gflop / med / peak["gflop_per_s"],
        }
    ratios = {key: steps[a]["median_step_s"] / steps[b]["median_step_s"]
              for key, (a, b) in RATIOS.items() if a in steps and b in steps}
    overhead = engine_overhead(cfg, device)
    if "clip_baseline" in steps:
        clip_ms = 1e3 * steps["clip_baseline"]["median_step_s"]
        overhead["share_of_clip_step"] = overhead["overhead_ms_per_step"] / clip_ms
    targets = {key: bc.target(ratios[r], *rest) for key, (r, *rest) in TARGETS.items() if r in ratios}
    return {"config": asdict(cfg), "device": str(device), "reference_matmul": peak, "steps": steps,
            "ratios": ratios, "targets": targets, "engine_overhead": overhead}


def _round_range(steps: dict, num: str, den: str) -> str:
    """Spread of a time ratio over the interleaved rounds: how much machine load moved it."""
    ratios = [a / b for a, b in zip(steps[num]["rounds_step_s"], steps[den]["rounds_step_s"])]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def report(result: dict, title: str = "Training step", level: int = 2) -> list[bc.Section]:
    if "skipped" in result:
        return [bc.skipped(title, result["skipped"], "bench_train_step")]
    c, peak, s, ratios = result["config"], result["reference_matmul"], result["steps"], result["ratios"]
    plain = s.get("plain_open_clip", {}).get("median_step_s")
    rows = [[name, f"{x['median_step_s'] * 1e3:.1f}", f"{x['images_per_s']:.1f}",
             f"{x['gflop_per_step']:.1f}", f"{x['achieved_gflop_per_s']:.1f}",
             f"{100 * x['fraction_of_matmul_peak']:.1f} %",
             f"{plain / x['median_step_s']:.3f}x" if plain else "-"] for name, x in s.items()]
    intro = (
        f"`{c['model']}` towers at {c['image_size']}², batch {c['batch']} (expert batch "
        f"{c['expert_batch']}), {c['steps']} steps x {c['rounds']} interleaved rounds per contender, median "
        "per step. Reference: `plain_open_clip`, a hand loop of forward / `open_clip.loss.ClipLoss` / "
        "backward / clip / AdamW step / schedule on the same towers and batches, no MONAI or Ignite. FLOPs "
        "per step (forward + backward) from `FlopCounterMode`; the matrix peak is a "
        f"{peak['size']}² {peak['dtype']} matmul timed in the same run: {peak['gflop_per_s']:.0f} GFLOP/s."
    )
    notes = []
    if "clip_baseline_throughput_vs_plain_open_clip" in ratios:
        notes += [
            "- CLIP baseline through `ECLIPTrainer` (Ignite events, curriculum and LR handlers, "
            "per-iteration reseeding, logged metrics): "
            f"**{ratios['clip_baseline_throughput_vs_plain_open_clip']:.3f}x** the plain loop's throughput "
            f"(per round: {_round_range(s, 'plain_open_clip', 'clip_baseline')}).",
            "- Where the per-round spread is wider than the gap to 1.0, the machine's load decided the "
            "median, not the engine; `bench_train_step.py` also times the engine's own per-step cost against "
            "the hand loop on a toy network (`engine_overhead` in its JSON).",
        ]
    o = result.get("engine_overhead")
    if o:
        share = o.get("share_of_clip_step")
        notes.append(
            "- What the engine itself adds, measured apart on a toy network whose step is ~1 ms of compute: "
            f"`ECLIPTrainer` {o['trainer_ms_per_step']:.2f} ms/step vs the hand loop "
            f"{o['plain_ms_per_step']:.2f} ms/step, i.e. {o['overhead_ms_per_step']:+.2f} ms per step"
            + (f" ({100 * share:.2f} % of the CLIP step above)." if share is not None else ".")
        )
    if "eclip_expert_cost_vs_clip_baseline" in ratios:
        flop_ratio = s["eclip_expert"]["gflop_per_step"] / s["clip_baseline"]["gflop_per_step"]
        notes.append(
            "- eCLIP step with an expert batch of B/2: "
            f"**{ratios['eclip_expert_cost_vs_clip_baseline']:.2f}x** (per round: "
            f"{_round_range(s, 'eclip_expert', 'clip_baseline')}) the CLIP step's time for {flop_ratio:.2f}x "
            "its FLOPs (1.5x the tower work plus the heatmap processor and mixup on B/2 images)."
        )
    for name, label in (("eclip_no_expert", "eCLIP step without an expert batch"),
                        ("eclip_priming", "eCLIP cold-start step with the priming loss")):
        if f"{name}_cost_vs_clip_baseline" in ratios:
            notes.append(f"- {label}: {ratios[f'{name}_cost_vs_clip_baseline']:.2f}x the CLIP step.")
    header = ("step", "median ms", "main images/s", "GFLOP / step", "GFLOP/s", "of matmul peak",
              "throughput vs plain")
    return [bc.Section(title, intro, header, rows, notes, level)]


def main(argv: list[str] | None = None) -> dict:
    return bc.main(bc.TrainStepConfig, __doc__, run, report, argv)


if __name__ == "__main__":
    main()
