"""Benchmark the data path on phantom MIMIC-CXR / EGD-CXR / REFLACX files: DICOM, caching, gaze heatmaps.

    python scripts/bench_data.py                        # 150 phantom studies under data/bench_phantom
    python scripts/bench_data.py --quick                # 40 studies, fewer repeats
    python scripts/bench_data.py --data-dir /tmp/ph --studies 60 --json data.json

Measured in one run, each against a named reference:

1. DICOM → normalised 224² tensor with ``LoadCXRDicomd`` + the eval pipeline (``eval_transforms``), images/s
   on one core (torch and the transforms on 1 thread), with the load alone broken out.
2. The same through MONAI's ``PersistentDataset``: first epoch (computes and writes the cache) and second
   epoch (reads it), against the uncached pipeline.
3. Fixations → heatmap: our vectorised ``FixationsToHeatmap`` against a straightforward per-fixation loop
   (one full-frame 2-D Gaussian per fixation). Outputs must agree within 1e-5 (asserted; the max absolute
   difference is reported).
4. Whether the training DataLoader keeps up with the training step: the bundle's train pipeline (cached
   deterministic prefix, random crop + CLAHE + normalisation per epoch, tokenised reports, DataLoader with
   the trainer's seeded passes) in images/s on one process, against the CLIP-baseline step's images/s
   measured here on the same image size (``bench_train_step``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_common as bc
import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from threadpoolctl import threadpool_info, threadpool_limits
from torch.utils.data import DataLoader

from eclip_monai.data import build_expert_datalist, build_mimic_datalist
from eclip_monai.data.mimic import read_mimic_image_sizes
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.engines import SeededPasses
from eclip_monai.networks import build_tokenizer
from eclip_monai.transforms import FixationsToHeatmap, LoadCXRDicomd
from eclip_monai.transforms.pipelines import eval_transforms, train_transforms

HEATMAP_TOLERANCE = 1e-5


def reference_heatmap(fixations, spatial_size, original_size, pixels_per_degree, shown_region, sigma_deg):
    """The per-fixation loop: for each fixation on the (shown) image, add its duration × a full-frame 2-D
    Gaussian (σ = ``sigma_deg`` degrees, at least half an output pixel) zeroed outside the shown region;
    normalise to max 1. Written from the heatmap definition, independently of ``FixationsToHeatmap``."""
    height, width = spatial_size
    orig_h, orig_w = original_size
    sy, sx = height / orig_h, width / orig_w
    rows = np.arange(height, dtype=np.float64)[:, None]
    cols = np.arange(width, dtype=np.float64)[None, :]
    orig_rows, orig_cols = (rows + 0.5) / sy - 0.5, (cols + 0.5) / sx - 0.5  # pixel centres, original frame
    ppd = np.broadcast_to(
        np.asarray(pixels_per_degree, dtype=np.float64).reshape(-1, 1)
        if np.ndim(pixels_per_degree) < 2
        else pixels_per_degree,
        (len(fixations), 2),
    )
    region = np.array([-0.5, -0.5, orig_w - 0.5, orig_h - 0.5])
    regions = (
        np.broadcast_to(region, (len(fixations), 4))
        if shown_region is None
        else np.broadcast_to(np.asarray(shown_region, dtype=np.float64), (len(fixations), 4))
    )
    heat = np.zeros((height, width))
    for (x, y, duration), (ppd_x, ppd_y), shown in zip(np.asarray(fixations, dtype=np.float64), ppd, regions):
        xmin, ymin = max(shown[0], region[0]), max(shown[1], region[1])
        xmax, ymax = min(shown[2], region[2]), min(shown[3], region[3])
        if not (xmin <= x <= xmax and ymin <= y <= ymax):
            continue  # off the image or its shown region: dropped
        sigma_x = max(sigma_deg * ppd_x * sx, 0.5)
        sigma_y = max(sigma_deg * ppd_y * sy, 0.5)
        mx, my = (x + 0.5) * sx - 0.5, (y + 0.5) * sy - 0.5
        gaussian = np.exp(-0.5 * (((cols - mx) / sigma_x) ** 2 + ((rows - my) / sigma_y) ** 2))
        inside = (orig_cols >= xmin) & (orig_cols <= xmax) & (orig_rows >= ymin) & (orig_rows <= ymax)
        heat += duration * gaussian * inside
    return torch.from_numpy((heat / heat.max()).astype(np.float32)[None])


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _images_per_s(dataset, indices) -> float:
    start = time.perf_counter()
    for i in indices:
        dataset[i]
    return len(indices) / (time.perf_counter() - start)


def bench_dicom(items, args, cache_dir: Path) -> dict:
    """Images/s of DICOM → normalised tensor, uncached and through PersistentDataset (epochs 1 and 2)."""
    data = [{"image": item["image"]} for item in items]
    indices = list(range(len(data)))
    pipeline = eval_transforms(args.image_size)
    load_only = Dataset(data, transform=LoadCXRDicomd("image"))
    uncached = Dataset(data, transform=pipeline)
    uncached[0]  # warm-up: imports, decoder selection
    bc.log(f"DICOM -> {args.image_size}² tensor: {len(data)} images x {args.repeats} interleaved repeats")
    times = {"load_only": [], "eval_pipeline": []}
    for _ in range(args.repeats):
        times["load_only"].append(_images_per_s(load_only, indices))
        times["eval_pipeline"].append(_images_per_s(uncached, indices))
    persistent = PersistentDataset(data, transform=pipeline, cache_dir=cache_dir)
    first = _images_per_s(persistent, indices)
    second = [_images_per_s(persistent, indices) for _ in range(args.repeats)]
    sample = uncached[0]["image"]
    result = {
        "images": len(data),
        "output_shape": list(sample.shape),
        "load_only_images_per_s": bc.median(times["load_only"]),
        "eval_pipeline_images_per_s": bc.median(times["eval_pipeline"]),
        "persistent_epoch1_images_per_s": first,
        "persistent_epoch2_images_per_s": bc.median(second),
    }
    result["persistent_epoch2_speedup_vs_uncached"] = (
        result["persistent_epoch2_images_per_s"] / result["eval_pipeline_images_per_s"]
    )
    return result


def bench_heatmap(expert_items, sizes, args) -> dict:
    """Vectorised ``FixationsToHeatmap`` against ``reference_heatmap`` on every expert image's gaze."""
    render = FixationsToHeatmap(sigma=args.sigma_deg, sigma_unit="deg")
    cases = []
    for item in expert_items:
        orig = sizes[item["dicom_id"]]
        scale = args.image_size / min(orig)
        spatial = (max(args.image_size, round(orig[0] * scale)), max(args.image_size, round(orig[1] * scale)))
        cases.append((item["fixations"], spatial, orig, item["pixels_per_degree"], item.get("shown_region")))
    if not cases:
        raise RuntimeError("the phantom dataset has no expert (gaze) images; generate more studies")
    max_diff = 0.0
    for fix, spatial, orig, ppd, shown in cases:
        ours = render(fix, spatial, orig, ppd, shown)
        ref = reference_heatmap(fix, spatial, orig, ppd, shown, args.sigma_deg)
        max_diff = max(max_diff, float((ours - ref).abs().max()))
    assert max_diff <= HEATMAP_TOLERANCE, f"heatmaps differ by {max_diff:.2e} > {HEATMAP_TOLERANCE}"
    fixations = [len(c[0]) for c in cases]
    bc.log(
        f"heatmaps: {len(cases)} gaze maps, {np.mean(fixations):.0f} fixations each on average; "
        f"max |ours - reference| = {max_diff:.2e}"
    )

    def ours():
        for fix, spatial, orig, ppd, shown in cases:
            render(fix, spatial, orig, ppd, shown)

    def reference():
        for fix, spatial, orig, ppd, shown in cases:
            reference_heatmap(fix, spatial, orig, ppd, shown, args.sigma_deg)

    times = {"vectorised": [], "vectorised_default_blas_threads": [], "per_fixation_reference": []}
    for _ in range(args.repeats):  # interleaved; limiting BLAS threads is slow, so it stays outside the clock
        with threadpool_limits(1):
            times["vectorised"].append(_seconds(ours))
            times["per_fixation_reference"].append(_seconds(reference))
        times["vectorised_default_blas_threads"].append(_seconds(ours))
    ours_s, ref_s = bc.median(times["vectorised"]), bc.median(times["per_fixation_reference"])
    threaded_s = bc.median(times["vectorised_default_blas_threads"])
    return {
        "maps": len(cases),
        "mean_fixations": float(np.mean(fixations)),
        "max_fixations": int(np.max(fixations)),
        "output_size": list(cases[0][1]),
        "max_abs_diff": max_diff,
        "identical_within_tolerance": max_diff <= HEATMAP_TOLERANCE,
        "tolerance": HEATMAP_TOLERANCE,
        "vectorised_ms_per_map": 1e3 * ours_s / len(cases),
        "reference_ms_per_map": 1e3 * ref_s / len(cases),
        "speedup_vs_reference": ref_s / ours_s,
        "blas_threads": max(
            (p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1
        ),
        "default_blas_threads_ms_per_map": 1e3 * threaded_s / len(cases),
        "default_blas_threads_speedup_vs_reference": ref_s / threaded_s,
    }


def bench_loader(items, expert_items, args) -> dict:
    """Train DataLoader images/s on one core: cached prefix, random part per epoch, collation."""
    tokenizer = build_tokenizer(args.model)
    preprocessing = train_transforms(args.image_size, tokenizer=tokenizer)
    expert_preprocessing = train_transforms(
        args.image_size, tokenizer=tokenizer, with_heatmap=True, sigma_deg=args.sigma_deg
    )
    batch = min(args.batch, len(items))
    result = {"batch": batch, "num_workers": 0, "loader_threads": 1}
    for name, data, transform, size in (
        ("main", items, preprocessing, batch),
        ("expert", expert_items, expert_preprocessing, max(2, batch // 2)),
    ):
        size = min(size, len(data))
        cached = SkipBadSamples(
            CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=0, progress=False)
        )
        loader = DataLoader(
            cached, batch_size=size, shuffle=True, drop_last=True, num_workers=0, collate_fn=collate_skip_bad
        )
        passes = SeededPasses(loader, seed=0)
        rates = []
        for epoch in range(args.repeats):
            start = time.perf_counter()
            count = sum(len(b["image"]) for b in passes.iter_from(epoch * len(passes)))
            rates.append(count / (time.perf_counter() - start))
        result[f"{name}_loader_images_per_s"] = bc.median(rates)
        result[f"{name}_batch"] = size
    return result


def bench_step(args, loader: dict) -> dict:
    """The training step's images/s on all threads (``bench_train_step``), and the loader's share of it."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_train_step

    step_args = bench_train_step.parse_args(
        [
            "--model",
            args.model,
            "--image-size",
            str(args.image_size),
            "--batch",
            str(args.batch),
            "--steps",
            "1",
            "--rounds",
            str(args.repeats),
            "--warmup",
            "1",
            "--contenders",
            "clip_baseline",
            "eclip_expert",
        ]
    )
    step_args.amp = False
    contenders = bench_train_step.build_contenders(step_args, torch.device("cpu"))
    for contender in contenders.values():
        contender(1)
    times = bc.interleaved_rounds({n: (lambda c=c: c(1)) for n, c in contenders.items()}, args.repeats)
    clip_step, expert_step = bc.median(times["clip_baseline"]), bc.median(times["eclip_expert"])
    expert_batch = step_args.expert_batch
    result = {
        "step_threads": torch.get_num_threads(),
        "clip_step_s": clip_step,
        "clip_step_images_per_s": args.batch / clip_step,
        "eclip_expert_step_s": expert_step,
        "eclip_expert_step_images_per_s": (args.batch + expert_batch) / expert_step,
    }
    # loading a main batch (+ an expert batch) in the training process adds this share to each step
    main_load = args.batch / loader["main_loader_images_per_s"]
    expert_load = expert_batch / loader["expert_loader_images_per_s"]
    result["main_loader_vs_clip_step"] = loader["main_loader_images_per_s"] / result["clip_step_images_per_s"]
    result["load_share_of_clip_step"] = main_load / clip_step
    result["load_share_of_eclip_expert_step"] = (main_load + expert_load) / expert_step
    result["keeps_up"] = result["main_loader_vs_clip_step"] >= 1.0
    return result


def run(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    root = ensure_phantom(args.data_dir, studies=args.studies, seed=0, eval_size=0, progress=False)
    mimic = root / "mimic-cxr"
    items = build_mimic_datalist(mimic, splits=("train", "validate", "test"))
    train = build_mimic_datalist(mimic, splits=("train",))
    expert = build_expert_datalist(
        train, egd_root=root / "egd-cxr", reflacx_root=root / "reflacx", mimic_root=mimic
    )
    sizes = read_mimic_image_sizes(mimic)
    config = {k: v for k, v in vars(args).items() if k != "json"}
    bc.log(f"data path on {len(items)} phantom DICOMs ({len(expert)} with gaze) from {root}")
    result = {"config": config, "phantom_images": len(items), "phantom_expert_images": len(expert)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # images/s per core, as in a DataLoader worker (plus one BLAS thread)
    cache_dir = Path(tempfile.mkdtemp(prefix="bench_persistent_"))
    try:
        with threadpool_limits(1):
            result["dicom"] = bench_dicom(items, args, cache_dir)
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
    result["heatmap"] = bench_heatmap(expert, sizes, args)
    with threadpool_limits(1):
        result["loader"] = bench_loader(train, expert, args)
    torch.set_num_threads(threads)
    result["loader"].update(bench_step(args, result["loader"]))
    result["targets"] = {
        "heatmap_speedup": bc.target(
            result["heatmap"]["speedup_vs_reference"],
            20,
            ">=",
            "vectorised heatmap speed / per-fixation loop speed",
        ),
        "heatmap_identical": bc.target(
            result["heatmap"]["max_abs_diff"], HEATMAP_TOLERANCE, "<=", "max |vectorised - per-fixation loop|"
        ),
    }
    print_table(result)
    return result


def print_table(result: dict) -> None:
    d, h, lo = result["dicom"], result["heatmap"], result["loader"]
    ref = d["eval_pipeline_images_per_s"]
    rows = [
        ["LoadCXRDicomd alone", f"{d['load_only_images_per_s']:.1f} images/s", "-"],
        ["DICOM -> normalised tensor (eval pipeline)", f"{ref:.1f} images/s", "1.00x (reference)"],
        [
            "PersistentDataset, epoch 1 (writes cache)",
            f"{d['persistent_epoch1_images_per_s']:.1f} images/s",
            f"{d['persistent_epoch1_images_per_s'] / ref:.2f}x",
        ],
        [
            "PersistentDataset, epoch 2 (cache hits)",
            f"{d['persistent_epoch2_images_per_s']:.1f} images/s",
            f"{d['persistent_epoch2_speedup_vs_uncached']:.2f}x",
        ],
        ["per-fixation heatmap loop", f"{h['reference_ms_per_map']:.2f} ms/map", "1.00x (reference)"],
        [
            "FixationsToHeatmap (vectorised)",
            f"{h['vectorised_ms_per_map']:.3f} ms/map",
            f"{h['speedup_vs_reference']:.1f}x (max abs diff {h['max_abs_diff']:.1e})",
        ],
        [
            f"FixationsToHeatmap, numpy BLAS on {h['blas_threads']} threads",
            f"{h['default_blas_threads_ms_per_map']:.3f} ms/map",
            f"{h['default_blas_threads_speedup_vs_reference']:.1f}x",
        ],
        [
            f"CLIP-baseline training step ({lo['step_threads']} threads)",
            f"{lo['clip_step_images_per_s']:.1f} images/s",
            "1.00x (reference)",
        ],
        [
            "train DataLoader, main (cached, 1 process)",
            f"{lo['main_loader_images_per_s']:.1f} images/s",
            f"{lo['main_loader_vs_clip_step']:.2f}x",
        ],
        [
            "train DataLoader, expert (cached, 1 process)",
            f"{lo['expert_loader_images_per_s']:.1f} images/s",
            "-",
        ],
    ]
    print(bc.format_table(rows, ["data path (1 core unless noted)", "throughput", "vs reference"]))
    print(
        f"loading in the training process adds {100 * lo['load_share_of_clip_step']:.1f} % to a CLIP step "
        "and "
        f"{100 * lo['load_share_of_eclip_expert_step']:.1f} % to an eCLIP step with an expert batch"
    )
    bc.print_targets(result["targets"])


def parser() -> argparse.ArgumentParser:
    p = bc.script_parser(__doc__)
    p.add_argument("--data-dir", default="data/bench_phantom", help="phantom dataset (generated if absent)")
    p.add_argument("--studies", type=int, default=150)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="training batch (expert batch = batch // 2)")
    p.add_argument("--model", default="eclip-tiny", help="towers and tokenizer of the training step")
    p.add_argument("--sigma-deg", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads of the training step (0: leave as is)"
    )
    p.add_argument("--quick", action="store_true", help="40 studies, 2 repeats")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.studies, args.repeats = min(args.studies, 40), 2
    return args


def main(argv: list[str] | None = None) -> dict:
    logging.getLogger("eclip_monai").setLevel(logging.WARNING)
    args = parse_args(argv)
    result = run(args)
    bc.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
