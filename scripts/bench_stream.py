"""Benchmark the shard stream: images/s delivered to the training step by N DataLoader workers, vs the step.

    python scripts/bench_stream.py                       # 512 images in 258² shards, crops of 224², batch 32
    python scripts/bench_stream.py --quick               # 256 images, crops of 112², one round
    python scripts/bench_stream.py --workers 0 1 2 4 --json stream.json

Measured in one run:

1. A raw shard read (``ShardSet.read``: memory map → float32 (1, S, S)) on one core: the stream's floor.
2. Training items as ``ECLIPTrainer`` receives them: ``ShardDataset`` + ``train_transforms(...,
   loader=Identityd)`` (shortest side, random resized crop, CLAHE, normalisation, tokenised report) in
   ``ShardSampler`` order, collated by ``collate_skip_bad``, read through ``SeededPasses`` with N DataLoader
   workers (``--workers``), in interleaved rounds of one pass each: images/s over the pass (worker start
   included) and from its first batch on (steady state). One pass of expert batches (gaze heatmaps) in the
   training process.
3. The step that consumes them, the reference: the CLIP-baseline ``ECLIPTrainer`` step of
   ``bench_train_step`` at the same crop size and batch, on all threads.

Stream images/s / step images/s ≥ 1 means the workers keep up. The GPU projection is arithmetic on the
per-core figures: worker cores per GPU = the GPU step's images/s (``--gpu-images-per-s``, an assumption
until measured with ``bench_train_step.py --device cuda``) / the images/s of one worker.

The shard set is made once under ``--data-dir``: a phantom world whose training images are repeated under new
ids up to ``--images`` and written by ``data.shards.write_shards`` (a rerun checks it and writes nothing).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import bench_common as bc
import bench_train_step
import numpy as np
import torch
from monai.transforms import Identityd
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.data.shards import ShardSet, collect_items, write_shards
from eclip_monai.data.stream import ShardDataset, ShardSampler
from eclip_monai.engines import SeededPasses
from eclip_monai.networks import build_tokenizer
from eclip_monai.transforms.pipelines import shard_transforms, train_transforms


@dataclass(frozen=True)
class StreamConfig:
    data_dir: str = bc.option("data/bench_stream", "phantom world and shard sets (made if absent)")
    studies: int = bc.option(60, "phantom studies whose training images are repeated")
    images: int = bc.option(512, "training images in the shard set")
    shard_size: int = bc.option(258, "side S of the shard images")
    images_per_shard: int = 64
    window: int = bc.option(4, "shards shuffled together (ShardSampler window)")
    image_size: int = bc.option(224, "crop size: the network input")
    batch: int = 32
    workers: tuple[int, ...] = bc.option((0, 1, 2), "DataLoader worker counts to compare")
    rounds: int = bc.option(2, "interleaved passes per worker count")
    reads: int = bc.option(1000, "random raw shard reads")
    model: str = bc.option("eclip-tiny", "towers and tokenizer of the training step")
    step_rounds: int = 2
    gpu_images_per_s: float = bc.option(1500.0, "images/s one GPU's step consumes (the projection)")
    gpus_per_node: int = 8
    seed: int = 0

    def quick(self) -> StreamConfig:
        """256 images in 129² shards, crops of 112², one round"""
        return replace(self, images=min(self.images, 256), shard_size=min(self.shard_size, 129),
                       image_size=min(self.image_size, 112), rounds=1, step_rounds=1, reads=300)


def ensure_shards(cfg: StreamConfig) -> Path:
    """The benchmark's shard set (written once; a rerun only checks the checksums)."""
    root = Path(cfg.data_dir)
    world = ensure_phantom(root / "phantom", studies=cfg.studies, seed=0, eval_size=0, workers=1,
                           progress=False)
    train = collect_items(world / "mimic-cxr", world / "egd-cxr", world / "reflacx", splits=("train",))
    copies = math.ceil(cfg.images / len(train))
    items = [{**item, "dicom_id": f"{item['dicom_id']}-{k}"} for k in range(copies) for item in train]
    out = root / f"shards_{cfg.shard_size}px_{cfg.images}"
    settings = {"splits": ["train"], "views": list(FRONTAL_VIEWS), "repeated": copies}
    start = time.perf_counter()
    write_shards(items[: cfg.images], out, shard_transforms(cfg.shard_size),
                 image_size=cfg.shard_size, images_per_shard=cfg.images_per_shard, settings=settings,
                 progress=False)
    bc.log(f"shard set {out}: {cfg.images} images, ready in {time.perf_counter() - start:.1f} s")
    return out


def bench_read(out: Path, cfg: StreamConfig) -> dict:
    """Random raw reads per second on one core."""
    shards = ShardSet(out)
    rows = np.random.default_rng(cfg.seed).integers(0, len(shards), cfg.reads)

    def read():
        for index in rows:
            shards.read(*shards.locate(int(index)))

    read()  # maps every shard once
    seconds = bc.median([bc.seconds(read) for _ in range(cfg.rounds)])
    return {"reads": cfg.reads, "images_per_s": cfg.reads / seconds,
            "ms_per_image": 1000 * seconds / cfg.reads}


def stream(out: Path, cfg: StreamConfig, tokenizer, workers: int, gaze: bool = False) -> SeededPasses:
    """The trainer's view of the shard stream (the ``configs/shards.json`` wiring, one process)."""
    pipeline = train_transforms(cfg.image_size, tokenizer=tokenizer, loader=Identityd, with_heatmap=gaze)
    dataset = ShardDataset(out, pipeline, gaze_only=gaze, cache_shards=2 * cfg.window)
    batch = max(2, cfg.batch // 2) if gaze else cfg.batch
    sampler = ShardSampler(dataset, batch, seed=cfg.seed, window=None if gaze else cfg.window)
    loader = DataLoader(SkipBadSamples(dataset, describe=True), batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate_skip_bad)
    return SeededPasses(loader, seed=cfg.seed)


def one_pass(passes: SeededPasses, epoch: int) -> dict:
    """Images, seconds over the pass and images/s after its first batch (workers started by then)."""
    start = time.perf_counter()
    first = first_images = None
    images = 0
    for batch in passes.iter_from(epoch * len(passes)):
        images += len(batch["image"])
        if first is None:
            first, first_images = time.perf_counter(), images
    end = time.perf_counter()
    return {"images": images, "seconds": end - start, "first_batch_s": first - start,
            "steady_images_per_s": (images - first_images) / (end - first) if end > first else float("nan")}


def bench_stream(out: Path, cfg: StreamConfig) -> dict:
    tokenizer = build_tokenizer(cfg.model)
    streams = {n: stream(out, cfg, tokenizer, n) for n in cfg.workers}
    runs: dict[int, list[dict]] = {n: [] for n in cfg.workers}
    for r, n in bc.rotations(list(cfg.workers), cfg.rounds):
        runs[n].append(one_pass(streams[n], r))
        last = runs[n][-1]
        bc.log(f"round {r + 1}/{cfg.rounds}, {n} workers: {last['images'] / last['seconds']:.1f} images/s "
               "over the pass")
    result = {"batch": cfg.batch, "batches_per_pass": len(streams[cfg.workers[0]]), "by_workers": {}}
    for n, passes in runs.items():
        steady = [p["steady_images_per_s"] for p in passes]
        result["by_workers"][str(n)] = {
            "pass_images_per_s": bc.median([p["images"] / p["seconds"] for p in passes]),
            "steady_images_per_s": bc.median(steady), "steady_rounds": steady,
            "first_batch_s": bc.median([p["first_batch_s"] for p in passes]),
        }
    expert = one_pass(stream(out, cfg, tokenizer, 0, gaze=True), 0)
    result["expert_no_workers_images_per_s"] = expert["images"] / expert["seconds"]
    return result


def bench_breakdown(out: Path, cfg: StreamConfig, items: int = 128, repeats: int = 3) -> dict:
    """Milliseconds per image of each part of the train stream on one core, the least of ``repeats``: the item
    (memory-map read, float conversion, ``MetaTensor``), each transform of the pipeline, collation."""
    pipeline = train_transforms(cfg.image_size, tokenizer=build_tokenizer(cfg.model), loader=Identityd)
    dataset = ShardDataset(out)
    count = min(items, len(dataset))
    best: dict[str, float] = {}
    for _ in range(repeats):
        parts = {}
        start = time.perf_counter()
        batch = [dataset[i] for i in range(count)]
        parts["ShardDataset item"] = time.perf_counter() - start
        for transform in pipeline.transforms:
            start = time.perf_counter()
            batch = [transform(item) for item in batch]
            name = type(transform).__name__
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
        start = time.perf_counter()
        for first in range(0, count, cfg.batch):
            collate_skip_bad(batch[first:first + cfg.batch])
        parts["collate_skip_bad"] = time.perf_counter() - start
        best = {name: min(seconds, best.get(name, seconds)) for name, seconds in parts.items()}
    return {name: 1000 * seconds / count for name, seconds in best.items()}


def bench_step(cfg: StreamConfig) -> dict:
    """The CLIP-baseline step's images/s on all threads (``bench_train_step``)."""
    step = bc.TrainStepConfig(model=cfg.model, image_size=cfg.image_size, batch=cfg.batch, steps=1, warmup=1,
                              expert_batch=max(2, cfg.batch // 2), contenders=("clip_baseline",))
    contenders = bench_train_step.build_contenders(step, torch.device("cpu"), amp=False)
    times = bc.interleaved_rounds({n: (lambda c=c: c(1)) for n, c in contenders.items()}, cfg.step_rounds,
                                  warmup=True)
    seconds = bc.median(times["clip_baseline"])
    return {"threads": torch.get_num_threads(), "step_s": seconds, "images_per_s": cfg.batch / seconds}


def run(cfg: StreamConfig) -> dict:
    logging.getLogger("eclip_monai").setLevel(logging.WARNING)
    result = {"config": asdict(cfg), "machine": bc.machine_info()}
    out = ensure_shards(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core, as in a DataLoader worker (plus one BLAS thread)
    with threadpool_limits(1):
        result["read"] = bench_read(out, cfg)
        result["stream"] = bench_stream(out, cfg)
        result["breakdown_ms"] = bench_breakdown(out, cfg)
    torch.set_num_threads(threads)
    result["step"] = step = bench_step(cfg)
    per_worker = result["stream"]["by_workers"].get("1", {}).get("steady_images_per_s")
    if per_worker:
        cores = cfg.gpu_images_per_s / per_worker
        result["gpu_projection"] = {
            "gpu_images_per_s": cfg.gpu_images_per_s, "images_per_s_per_worker": per_worker,
            "worker_cores_per_gpu": cores, "worker_cores_per_node": cores * cfg.gpus_per_node,
            "read_cores_per_gpu": cfg.gpu_images_per_s / result["read"]["images_per_s"],
        }
    result["stream"]["vs_step"] = {n: w["steady_images_per_s"] / step["images_per_s"]
                                   for n, w in result["stream"]["by_workers"].items()}
    return result


def report(result: dict, title: str = "Shard stream to the training step",
           level: int = 2) -> list[bc.Section]:
    c, s, step, read = result["config"], result["stream"], result["step"], result["read"]
    rows = [[f"CLIP-baseline step (`{c['model']}`, {c['image_size']}², batch {c['batch']}, {step['threads']} "
             "threads)", f"{step['images_per_s']:.1f}", "-", "reference"],
            ["raw shard read (`ShardSet.read`, 1 core)", f"{read['images_per_s']:.0f}", "-",
             f"{read['images_per_s'] / step['images_per_s']:.0f}x"]]
    for n, w in s["by_workers"].items():
        where = "in the training process, 1 thread" if n == "0" else f"{n} worker{'s' * (n != '1')}"
        low, high = min(w["steady_rounds"]), max(w["steady_rounds"])
        spread = f" ({low:.0f}-{high:.0f})" if len(w["steady_rounds"]) > 1 else ""
        rows.append([f"train stream, {where}", f"{w['steady_images_per_s']:.1f}{spread}",
                     f"{w['pass_images_per_s']:.1f}", f"{s['vs_step'][n]:.1f}x"])
    rows.append(["expert stream with gaze heatmaps, in the training process", "-",
                 f"{s['expert_no_workers_images_per_s']:.1f}", "-"])
    intro = (f"{c['images']} phantom training images in shards of {c['images_per_shard']} at "
             f"{c['shard_size']}², read in `ShardSampler` order (window {c['window']} shards) through "
             "`SeededPasses` as `ECLIPTrainer` reads them: `ShardDataset` + `train_transforms(..., "
             "loader=Identityd)` (shortest side, random resized crop, CLAHE, normalisation, tokenised "
             f"report), batches of {c['batch']}; {c['rounds']} interleaved pass(es) per worker count, "
             "medians. Machine: "
             f"{result['machine']['cpu']}, {result['machine']['cpu_count']} cores, load average "
             f"{result['machine'].get('load_average_1min', float('nan')):.1f} at the start.")
    header = ("images delivered", "images/s (steady; per-round range)", "images/s (whole pass)", "vs step")
    notes = [f"- Steady: from the first batch of a pass to its last; whole pass: including the workers' "
             f"start ({s['batches_per_pass']} batches per pass; on MIMIC-CXR a pass is thousands of batches, "
             "so the steady figure is the one that counts)."]
    parts = result.get("breakdown_ms", {})
    if parts:
        listed = ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items() if ms >= 0.01)
        notes.append(f"- Where a core's time goes, ms per image: {listed}; total {sum(parts.values()):.2f} "
                     f"ms, {1000 / sum(parts.values()):.0f} images/s.")
    zero = s["by_workers"].get("0")
    if zero:
        share = c["batch"] / zero["steady_images_per_s"] / step["step_s"]
        notes.append(f"- Loading in the training process (`num_workers=0`) adds {100 * share:.0f} % to each "
                     "CPU step; one worker on a core of its own hides it.")
    g = result.get("gpu_projection")
    if g:
        notes.append(
            f"- GPU projection (arithmetic, not measured on a GPU): a GPU step that consumes "
            f"{g['gpu_images_per_s']:.0f} images/s (assumed: Swin-T / ViT-B at 224² in bf16; replace by "
            f"`bench_train_step.py --device cuda`) needs {g['gpu_images_per_s']:.0f} / "
            f"{g['images_per_s_per_worker']:.1f} (one worker's images/s) = **{g['worker_cores_per_gpu']:.1f} "
            f"worker cores per GPU**, {g['worker_cores_per_node']:.0f} for {c['gpus_per_node']} GPUs. "
            f"Reading alone would take {g['gpu_images_per_s']:.0f} / {read['images_per_s']:.0f} = "
            f"{g['read_cores_per_gpu']:.2f} cores per GPU: the augmentation (crop, CLAHE, tokenising), not "
            "the shards, sets the cost; decoding full-size DICOMs every epoch instead would add their decode "
            "time per image (see the full-size decode figures).")
    return [bc.Section(title, intro, header, rows, notes, level)]


def main(argv: list[str] | None = None) -> dict:
    return bc.main(StreamConfig, __doc__, run, report, argv)


if __name__ == "__main__":
    main()
