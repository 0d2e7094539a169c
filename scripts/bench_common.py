"""What the ``scripts/bench_*.py`` benchmarks share: settings and presets, interleaved timing, the report that
each script prints and ``bench_all.py`` writes into docs/performance.md, and the per-fixation heatmap loop.

Not a benchmark and not part of the package: a script run as ``python scripts/bench_X.py`` finds this module
beside it, as Python puts the script's own folder first on ``sys.path``. Every benchmark compares our code
with a *named reference measured in the same run*, so machine load and clock drift hit both sides alike:
contenders are timed in interleaved rounds (A, B, C, A, B, C, ...) and each reports the median over rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

TRAIN_CONTENDERS = ("plain_open_clip", "clip_baseline", "eclip_no_expert", "eclip_expert", "eclip_priming")
RETRIEVAL_CONTENDERS = ("torch", "faiss", "full_matmul", "gemm_only")


def option(default, help: str, **add_argument):
    """A settings field that is also a command-line option ``--field-name`` with this help."""
    return field(default=default, metadata={"help": help, **add_argument})


# Settings: each area's fields are its script's options; ``quick()`` is its ``--quick``.


@dataclass(frozen=True)
class TrainStepConfig:
    device: str = option("cpu", "cpu or cuda (skipped with a note when CUDA is absent)")
    model: str = option("eclip-tiny", "open_clip config of the towers (eclip-tiny, eclip-tiny-cnn, ...)")
    image_size: int = 224
    batch: int = 32
    expert_batch: int | None = option(None, "expert batch (default batch // 2)", type=int)
    context_length: int = option(77, "token rows per text (the text tower's length)")
    steps: int = option(3, "steps per contender per round")
    rounds: int = 7
    warmup: int = 2
    threads: int = option(0, "torch threads (0: leave as is)")
    matmul_size: int = option(2048, "side of the reference matmul")
    contenders: tuple[str, ...] = option(TRAIN_CONTENDERS, "steps to time", choices=TRAIN_CONTENDERS)
    no_amp: bool = option(False, "on CUDA, run in float32 instead of bf16 autocast")
    seed: int = 0

    def quick(self) -> TrainStepConfig:
        """112², 2 steps x 5 rounds"""
        return replace(self, image_size=min(self.image_size, 112), steps=2, rounds=5)


@dataclass(frozen=True)
class DataConfig:
    data_dir: str = option("data/bench_phantom", "phantom dataset (generated if absent)")
    studies: int = 150
    image_size: int = 224
    batch: int = option(32, "training batch (expert batch = batch // 2)")
    model: str = option("eclip-tiny", "towers and tokenizer of the training step")
    sigma_deg: float = 1.0
    repeats: int = 3
    threads: int = option(0, "torch threads of the training step (0: leave as is)")

    def quick(self) -> DataConfig:
        """40 studies, 2 repeats"""
        return replace(self, studies=min(self.studies, 40), repeats=2)


@dataclass(frozen=True)
class RetrievalConfig:
    sizes: tuple[int, ...] = option((10_000, 100_000, 1_000_000), "candidate counts")
    queries: int = 5_000
    dim: int = 512
    k: int = 10
    threads: int = option(0, "threads for torch and faiss (0: torch's default)")
    contenders: tuple[str, ...] = option(RETRIEVAL_CONTENDERS, "searches", choices=RETRIEVAL_CONTENDERS)
    full_matmul_up_to: int = option(100_000, "largest candidate count of the full-matrix search")
    rounds: int = option(3, "interleaved rounds below --large candidates")
    rounds_large: int = option(1, "rounds from --large candidates on")
    large: int = 500_000
    in_process: bool = option(False, "search in this process, not a fresh one each (rougher peak memory)")
    matmul_size: int = option(2048, "side of the reference matmul")
    model: str = option("eclip-tiny", "network of the zero-shot throughput")
    image_size: int = 224
    zero_shot_batch: int = option(64, "0 skips the zero-shot throughput")
    zero_shot_rounds: int = 5
    max_prompts: int = option(0, "prompts per class (0: the whole ensemble)")
    approximate_sizes: tuple[int, ...] = option((100_000, 300_000, 1_000_000),
                                                "candidate counts of approximate vs exact (0: skip it)")
    nprobes: tuple[int, ...] = option((4, 8, 16, 32), "IVF lists searched per query, one contender each")
    ef_searches: tuple[int, ...] = option((64, 128, 256), "HNSW efSearch values, one contender each")
    hnsw_up_to: int = option(100_000, "largest candidate count of the HNSW contenders (slow to build)")
    latency_queries: int = option(20, "queries searched one at a time for the per-query latency")
    approximate_only: bool = option(False, "run only the approximate-vs-exact comparison")

    def quick(self) -> RetrievalConfig:
        """10k and 100k candidates, 2 rounds; approximate vs exact at 100k, without HNSW"""
        small = tuple(n for n in self.sizes if n <= 100_000) or (min(self.sizes),)
        approximate = tuple(n for n in self.approximate_sizes if n <= 100_000)
        approximate = approximate or (min(self.approximate_sizes),)
        return replace(self, sizes=small, rounds=2, zero_shot_rounds=3, approximate_sizes=approximate,
                       hnsw_up_to=0)


@dataclass(frozen=True)
class InferenceConfig:
    device: str = option("cpu", "cpu or cuda (skipped with a note when CUDA is absent)")
    model: str = "eclip-tiny"
    image_size: int = 224
    batch: int = option(32, "batch of the throughput measurement")
    latency_calls: int = option(20, "batch-1 calls per round")
    rounds: int = 5
    threads: int = option(0, "torch / ONNX Runtime threads (0: torch's default)")
    matmul_size: int = option(2048, "side of the reference matmul")
    no_amp: bool = option(False, "on CUDA, float32 instead of bf16 autocast")

    def quick(self) -> InferenceConfig:
        """batch 16, 10 latency calls, 3 rounds"""
        return replace(self, batch=min(self.batch, 16), latency_calls=10, rounds=3)


_CUDA_TRAIN = TrainStepConfig(device="cuda")
_CUDA_INFERENCE = InferenceConfig(device="cuda", matmul_size=8192)
_SMOKE_STEP = dict(image_size=32, batch=4, steps=1, rounds=1, warmup=1)
_SMOKE_INFERENCE = dict(image_size=32, batch=2, latency_calls=1, rounds=1)
PRESETS = {  # ``bench_all.py`` mode -> area -> settings
    "full": {"train_step": TrainStepConfig(), "data": DataConfig(), "retrieval": RetrievalConfig(),
             "inference": InferenceConfig(), "cuda_train_step": replace(_CUDA_TRAIN, batch=256),
             "cuda_inference": replace(_CUDA_INFERENCE, batch=256)},
    "quick": {
        "train_step": TrainStepConfig().quick(),
        "data": DataConfig().quick(),
        "retrieval": replace(RetrievalConfig().quick(), rounds=1, contenders=("torch", "faiss", "gemm_only")),
        "inference": InferenceConfig().quick(),
        "cuda_train_step": replace(_CUDA_TRAIN.quick(), batch=128),
        "cuda_inference": replace(_CUDA_INFERENCE.quick(), batch=128),
    },
    "smoke": {  # tiny sizes on one thread: every script runs, the numbers mean nothing
        "train_step": TrainStepConfig(**_SMOKE_STEP, matmul_size=128, threads=1,
                                      contenders=("plain_open_clip", "clip_baseline", "eclip_expert")),
        "data": DataConfig(studies=12, image_size=32, batch=4, repeats=1, threads=1),
        "retrieval": RetrievalConfig(sizes=(3000,), queries=200, dim=32, rounds=1, in_process=True, threads=1,
                                     contenders=("torch", "faiss"), matmul_size=128, image_size=32,
                                     zero_shot_batch=2, zero_shot_rounds=1, max_prompts=2,
                                     approximate_sizes=(3000,), nprobes=(1, 4), ef_searches=(16,),
                                     hnsw_up_to=3000, latency_queries=2),
        "inference": InferenceConfig(**_SMOKE_INFERENCE, matmul_size=128, threads=1),
        "cuda_train_step": TrainStepConfig(device="cuda", **_SMOKE_STEP),
        "cuda_inference": InferenceConfig(device="cuda", **_SMOKE_INFERENCE),
    },
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def parser(config: type, doc: str) -> argparse.ArgumentParser:
    """A script's options, one per field of ``config``; its docstring as description (first paragraph) and
    epilog (all of it), so ``--help`` shows the documented command lines."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], epilog=doc, formatter_class=_HelpFormatter)
    for f in fields(config):
        kwargs = {"default": f.default, "help": "(default: %(default)s)", **f.metadata}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        elif isinstance(f.default, tuple):
            kwargs.update(nargs="+", type=kwargs.get("type", type(f.default[0])))
        elif f.default is not None:
            kwargs["type"] = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), **kwargs)
    p.add_argument("--quick", action="store_true", help=config.quick.__doc__)
    p.add_argument("--json", default=None, help="write the results here")
    return p


def settings(config: type, doc: str, argv: Sequence[str] | None = None) -> tuple[object, str | None]:
    """The settings a script's command line asks for (``--quick`` applied), and where to write the JSON."""
    args = vars(parser(config, doc).parse_args(argv))
    quick, json_path = args.pop("quick"), args.pop("json")
    chosen = config(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    return (chosen.quick() if quick else chosen), json_path


def main(config: type, doc: str, run: Callable, report: Callable, argv: Sequence[str] | None = None) -> dict:
    """A benchmark script: its settings, run, the report printed, the results written as JSON."""
    chosen, json_path = settings(config, doc, argv)
    start = time.perf_counter()
    result = run(chosen)
    result["wall_s"] = time.perf_counter() - start
    print(render(report(result) + [targets_section(result.get("targets", {}))]))
    write_json(json_path, result)
    return result


# Timing


def prepare_device(cfg: TrainStepConfig | InferenceConfig) -> tuple[torch.device | None, bool, str | None]:
    """``(device, amp, None)``, with torch's threads set from ``cfg.threads`` and bf16 autocast on CUDA unless
    ``cfg.no_amp``; or ``(None, False, why it is skipped)``: ``--device cuda`` on a machine without CUDA is a
    note, not an error, so the same command line runs everywhere."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        skipped = ("CUDA requested but torch.cuda.is_available() is False on this machine: "
                   "CUDA section skipped")
        log(skipped)
        return None, False, skipped
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return torch.device(cfg.device), cfg.device == "cuda" and not cfg.no_amp, None


def synchronize(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device | str | None = None) -> float:
    """Wall seconds of one call, the device's queue drained before and after (GPU work is asynchronous)."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def rotations(names: Sequence[str], rounds: int) -> Iterator[tuple[int, str]]:
    """``(round, name)`` of interleaved rounds, each round's order rotated so that no contender always runs
    right after the same neighbour."""
    names = list(names)
    for r in range(rounds):
        yield from ((r, name) for name in names[r % len(names) :] + names[: r % len(names)])


def interleaved_rounds(contenders: Mapping[str, Callable[[], object]], rounds: int, device=None,
                       progress: Callable[[str], None] | None = None, warmup: bool = False) -> dict:
    """Seconds of each call of each contender over ``rounds`` interleaved rounds, after one untimed call of
    each with ``warmup`` (allocator, kernels, lazy initialisation)."""
    for contender in contenders.values() if warmup else ():
        contender()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for r, name in rotations(list(contenders), rounds):
        times[name].append(seconds(contenders[name], device))
        if progress is not None and all(len(t) == r + 1 for t in times.values()):
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items()))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def matmul_peak(size: int, dtype: torch.dtype, device: torch.device | str, repeats: int = 5) -> dict:
    """Achieved GFLOP/s of a ``size``² matrix multiply (2·n³ FLOPs), median of ``repeats``: the machine's
    practical matrix peak, against which a step's or a search's achieved FLOP/s is a fraction."""
    a, b, out = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(3))

    def multiply():
        torch.mm(a, b, out=out)

    s = median(interleaved_rounds({"mm": multiply}, repeats, device, warmup=True)["mm"])
    return {"size": size, "dtype": str(dtype).replace("torch.", ""), "gflop_per_s": 2 * size**3 / s / 1e9}


# Reports: one text, printed by each script and written into docs/performance.md


def table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table, padded so that it also reads as plain text."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    lines.insert(1, "| " + " | ".join("-" * w for w in widths) + " |")
    return "\n".join(lines)


@dataclass
class Section:
    """A heading, what was measured against what, the result rows and the notes they lead to; any part may be
    empty (a skipped area is a paragraph alone)."""

    title: str = ""
    intro: str = ""
    header: Sequence[str] = ()
    rows: list[Sequence] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    level: int = 2

    def lines(self) -> list[str]:
        out = [f"{'#' * self.level} {self.title}", ""] if self.title else []
        out += [self.intro, ""] if self.intro else []
        out += [table(self.header, self.rows), ""] if self.header else []
        return out + (self.notes + [""] if self.notes else [])


def render(sections: Sequence[Section]) -> str:
    return "\n".join(line for section in sections for line in section.lines())


def skipped(title: str, reason: str, script: str) -> Section:
    return Section(intro=f"{title}: skipped. {reason}. The same command runs it on a GPU machine: "
                         f"`python scripts/{script}.py --device cuda`.")


def target(value: float, threshold: float, op: str, what: str) -> dict:
    """A target check as stored in the JSON: ``{"what", "value", "target", "met"}``."""
    met = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[op]
    return {"what": what, "value": value, "target": f"{op} {threshold}", "met": bool(met)}


def targets_section(targets: Mapping[str, dict]) -> Section:
    rows = [[key, t["what"], f"{t['value']:.4g}", t["target"], "met" if t["met"] else "**missed**"]
            for key, t in targets.items()]
    header = ("target", "measured as", "value", "goal", "")
    return Section("Targets", header=header, rows=rows) if rows else Section()


def machine_info() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as f:
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    with contextlib.suppress(OSError):
        info["load_average_1min"] = os.getloadavg()[0]
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def log(message: str) -> None:
    print(message, flush=True)


# The named reference of the heatmap benchmark, also the oracle of tests/test_transforms_heatmap.py


def reference_heatmap(fixations, spatial_size, original_size, sigma_px, shown_region=None) -> torch.Tensor:
    """The per-fixation loop that ``FixationsToHeatmap`` must equal, written from the heatmap's definition
    and independently of its vectorised code: for each fixation on the image and inside its shown region, add
    its duration × a full-frame 2-D Gaussian (σ at least half an output pixel) zeroed outside that region;
    normalise to max 1. Returns a (1, H, W) float32 tensor, as the transform does.

    Args:
        fixations: (N, 3) ``[x, y, duration_s]`` in original pixels.
        spatial_size, original_size: (H, W) of the output and of the frame the fixations refer to.
        sigma_px: σ in original pixels: a scalar, per fixation (N,), or (N, 2) as (x, y).
        shown_region: ``[xmin, ymin, xmax, ymax]`` in original pixels, (4,) or (N, 4); None: the whole image.
    """
    fix = np.asarray(fixations, dtype=np.float64)
    (height, width), (orig_h, orig_w) = spatial_size, original_size
    sy, sx = height / orig_h, width / orig_w
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    orig_rows, orig_cols = (rows + 0.5) / sy - 0.5, (cols + 0.5) / sx - 0.5  # pixel centres, original frame
    sigma = np.asarray(sigma_px, dtype=np.float64)
    sigma = np.broadcast_to(sigma if sigma.ndim == 2 else sigma.reshape(-1, 1), (len(fix), 2))
    whole = (-0.5, -0.5, orig_w - 0.5, orig_h - 0.5)
    shown = whole if shown_region is None else np.asarray(shown_region, dtype=np.float64)
    regions = np.broadcast_to(shown, (len(fix), 4))
    heat = np.zeros((height, width))
    for (x, y, duration), (sig_x, sig_y), (x0, y0, x1, y1) in zip(fix, sigma, regions):
        x0, y0, x1, y1 = max(x0, whole[0]), max(y0, whole[1]), min(x1, whole[2]), min(y1, whole[3])
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            continue  # off the image or its shown region: dropped
        mx, my = (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5
        gx, gy = max(sig_x * sx, 0.5), max(sig_y * sy, 0.5)
        gaussian = np.exp(-0.5 * (((cols - mx) / gx) ** 2 + ((rows - my) / gy) ** 2))
        inside = (orig_cols >= x0) & (orig_cols <= x1) & (orig_rows >= y0) & (orig_rows <= y1)
        heat += duration * gaussian * inside
    return torch.from_numpy((heat / heat.max()).astype(np.float32)[None])
