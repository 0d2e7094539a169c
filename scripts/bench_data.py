"""Benchmark the data path on phantom MIMIC-CXR / EGD-CXR / REFLACX files: DICOM, caching, gaze heatmaps.

    python scripts/bench_data.py                        # 150 phantom studies under data/bench_phantom
    python scripts/bench_data.py --quick                # 40 studies, fewer repeats
    python scripts/bench_data.py --data-dir /tmp/ph --studies 60 --json data.json
    python scripts/bench_data.py --full-size-only --full-size-images 16   # only section 5, about 4 minutes

Measured in one run, each against a named reference:

1. DICOM → normalised 224² tensor with ``LoadCXRDicomd`` + the eval pipeline (``eval_transforms``), images/s
   on one core (torch and the transforms on 1 thread), with the load alone broken out.
2. The same through MONAI's ``PersistentDataset``: first epoch (computes and writes the cache) and second
   epoch (reads it), against the uncached pipeline.
3. Fixations → heatmap: our vectorised ``FixationsToHeatmap`` against a straightforward per-fixation loop
   (``bench_common.reference_heatmap``: one full-frame 2-D Gaussian per fixation). Outputs must agree within
   1e-5 (asserted; the max absolute difference is reported).
4. Whether the training DataLoader keeps up with the training step: the bundle's train pipeline (cached
   deterministic prefix, random crop + CLAHE + normalisation per epoch, tokenised reports, DataLoader with
   the trainer's seeded passes) in images/s on one process, against the CLIP-baseline step's images/s
   measured here on the same image size (``bench_train_step``).
5. Full-size DICOMs against shards (``--full-size-images N``; ``bench_all.py`` runs the plain ``DataConfig``
   and so skips it): N phantom DICOMs of MIMIC's size (``--full-size``: ~3,000 × 2,500, 12 bits) per transfer
   syntax, decoded + VOI + resized to the shard size by the chain ``scripts/preprocess_shards.py`` stores
   (reference: uncompressed), against reading a random image from the shards (``ShardSet.read``), all on one
   core; then preprocessing itself (``write_shards``, one worker) per syntax: seconds and bytes per image,
   projected to 10,000 images and to MIMIC-CXR's 377,110.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import bench_common as bc
import bench_train_step
import numpy as np
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from threadpoolctl import threadpool_info, threadpool_limits
from torch.utils.data import DataLoader

from eclip_monai.data import build_expert_datalist, build_mimic_datalist
from eclip_monai.data.mimic import read_mimic_image_sizes
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.data.phantom.full_size import FULL_SIZE_BITS, FULL_SIZE_UPSCALE
from eclip_monai.data.shards import DEFAULT_IMAGE_SIZE, ShardSet, collect_items, write_shards
from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.engines import SeededPasses
from eclip_monai.networks import build_tokenizer
from eclip_monai.transforms import FixationsToHeatmap, LoadCXRDicomd
from eclip_monai.transforms.pipelines import eval_transforms, shard_transforms, train_transforms

HEATMAP_TOLERANCE = 1e-5
MIMIC_IMAGES = 377_110  # DICOMs in MIMIC-CXR 2.0.0
PER_10K = 10_000
SHARD_READ_TARGET = 20  # shard read per core vs full-size decode per core (the target)


@dataclass(frozen=True)
class FullSizeDataConfig(bc.DataConfig):
    """``DataConfig`` plus the full-size section's settings (``bench_all.py`` passes a plain one)."""

    full_size_images: int = bc.option(16, "full-size DICOMs per transfer syntax (0: skip the section)")
    full_size_dir: str = bc.option("data/bench_phantom_full", "full-size phantom worlds (made if absent)")
    syntaxes: tuple[str, ...] = bc.option(("explicit", "rle", "jpeg2000"), "transfer syntaxes to compare",
                                          choices=("explicit", "rle", "jpeg2000"))
    shard_size: int = bc.option(DEFAULT_IMAGE_SIZE, "side of the shard images")
    shard_reads: int = bc.option(2000, "random shard reads per round")
    full_size_only: bool = bc.option(False, "run only the full-size section")


def _epoch(dataset):
    return lambda: [dataset[i] for i in range(len(dataset))]


def bench_dicom(items: list[dict], cfg: bc.DataConfig, cache_dir: Path) -> dict:
    """Images/s of DICOM → normalised tensor, uncached and through PersistentDataset (epochs 1 and 2)."""
    data = [{"image": item["image"]} for item in items]
    pipeline = eval_transforms(cfg.image_size)
    uncached, persistent = Dataset(data, pipeline), PersistentDataset(data, pipeline, cache_dir=cache_dir)
    uncached[0]  # warm-up: imports, decoder selection
    bc.log(f"DICOM -> {cfg.image_size}² tensor: {len(data)} images x {cfg.repeats} interleaved repeats")
    load_only = Dataset(data, LoadCXRDicomd("image"))
    contenders = {"load_only": _epoch(load_only), "eval_pipeline": _epoch(uncached)}
    times = bc.interleaved_rounds(contenders, cfg.repeats)
    times["persistent_epoch1"] = [bc.seconds(_epoch(persistent))]
    times["persistent_epoch2"] = [bc.seconds(_epoch(persistent)) for _ in range(cfg.repeats)]
    result = {"images": len(data), "output_shape": list(uncached[0]["image"].shape)}
    result |= {f"{name}_images_per_s": len(data) / bc.median(t) for name, t in times.items()}
    uncached_rate = result["eval_pipeline_images_per_s"]
    result["persistent_epoch2_speedup_vs_uncached"] = result["persistent_epoch2_images_per_s"] / uncached_rate
    return result


def bench_heatmap(expert_items: list[dict], sizes: dict, cfg: bc.DataConfig) -> dict:
    """Vectorised ``FixationsToHeatmap`` against the per-fixation loop on every expert image's gaze."""
    render = FixationsToHeatmap(sigma=cfg.sigma_deg, sigma_unit="deg")
    cases = []
    for item in expert_items:
        orig = sizes[item["dicom_id"]]
        scale = cfg.image_size / min(orig)
        spatial = (max(cfg.image_size, round(orig[0] * scale)), max(cfg.image_size, round(orig[1] * scale)))
        cases.append((item["fixations"], spatial, orig, item["pixels_per_degree"], item.get("shown_region")))
    if not cases:
        raise RuntimeError("the phantom dataset has no expert (gaze) images; generate more studies")

    def ours():
        return [render(fix, spatial, orig, ppd, shown) for fix, spatial, orig, ppd, shown in cases]

    def reference():
        return [bc.reference_heatmap(fix, spatial, orig, cfg.sigma_deg * np.asarray(ppd, float), shown)
                for fix, spatial, orig, ppd, shown in cases]

    max_diff = max(float((a - b).abs().max()) for a, b in zip(ours(), reference()))
    assert max_diff <= HEATMAP_TOLERANCE, f"heatmaps differ by {max_diff:.2e} > {HEATMAP_TOLERANCE}"
    fixations = [len(c[0]) for c in cases]
    bc.log(f"heatmaps: {len(cases)} gaze maps, {np.mean(fixations):.0f} fixations each on average; "
           f"max |ours - reference| = {max_diff:.2e}")
    times = {"vectorised": [], "reference": [], "default_blas_threads": []}
    for _ in range(cfg.repeats):  # interleaved; setting a BLAS thread limit is slow: it stays off the clock
        with threadpool_limits(1):
            times["vectorised"].append(bc.seconds(ours))
            times["reference"].append(bc.seconds(reference))
        times["default_blas_threads"].append(bc.seconds(ours))
    ours_s, ref_s, threaded_s = (bc.median(t) for t in times.values())
    blas_threads = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    return {
        "maps": len(cases), "mean_fixations": float(np.mean(fixations)),
        "max_fixations": int(np.max(fixations)), "output_size": list(cases[0][1]), "max_abs_diff": max_diff,
        "identical_within_tolerance": max_diff <= HEATMAP_TOLERANCE, "tolerance": HEATMAP_TOLERANCE,
        "vectorised_ms_per_map": 1e3 * ours_s / len(cases), "reference_ms_per_map": 1e3 * ref_s / len(cases),
        "speedup_vs_reference": ref_s / ours_s, "blas_threads": blas_threads,
        "default_blas_threads_ms_per_map": 1e3 * threaded_s / len(cases),
        "default_blas_threads_speedup_vs_reference": ref_s / threaded_s,
    }


def bench_loader(items: list[dict], expert_items: list[dict], cfg: bc.DataConfig) -> dict:
    """Train DataLoader images/s on one core: cached prefix, random part per epoch, collation."""
    tokenizer = build_tokenizer(cfg.model)
    batch = min(cfg.batch, len(items))
    result = {"batch": batch, "num_workers": 0, "loader_threads": 1}
    for name, data, with_heatmap, size in (("main", items, False, batch),
                                           ("expert", expert_items, True, max(2, batch // 2))):
        transform = train_transforms(cfg.image_size, tokenizer=tokenizer, with_heatmap=with_heatmap,
                                     sigma_deg=cfg.sigma_deg)
        size = min(size, len(data))
        cached = SkipBadSamples(CacheDataset(data, transform=transform, cache_rate=1.0, num_workers=0,
                                             progress=False))
        loader = DataLoader(cached, size, shuffle=True, drop_last=True, collate_fn=collate_skip_bad)
        passes, rates = SeededPasses(loader, seed=0), []
        for epoch in range(cfg.repeats):
            start = time.perf_counter()
            count = sum(len(b["image"]) for b in passes.iter_from(epoch * len(passes)))
            rates.append(count / (time.perf_counter() - start))
        result[f"{name}_loader_images_per_s"] = bc.median(rates)
        result[f"{name}_batch"] = size
    return result


def bench_step(cfg: bc.DataConfig, loader: dict) -> dict:
    """The training step's images/s on all threads (``bench_train_step``), and the loader's share of it."""
    expert_batch = max(2, cfg.batch // 2)
    step = bc.TrainStepConfig(model=cfg.model, image_size=cfg.image_size, batch=cfg.batch, steps=1, warmup=1,
                              expert_batch=expert_batch, contenders=("clip_baseline", "eclip_expert"))
    contenders = bench_train_step.build_contenders(step, torch.device("cpu"), amp=False)
    times = bc.interleaved_rounds({n: (lambda c=c: c(1)) for n, c in contenders.items()}, cfg.repeats,
                                  warmup=True)
    clip_step, expert_step = bc.median(times["clip_baseline"]), bc.median(times["eclip_expert"])
    # loading a main batch (+ an expert batch) in the training process adds this share to each step
    main_load = cfg.batch / loader["main_loader_images_per_s"]
    expert_load = expert_batch / loader["expert_loader_images_per_s"]
    main_vs_step = loader["main_loader_images_per_s"] / (cfg.batch / clip_step)
    return {
        "step_threads": torch.get_num_threads(), "clip_step_s": clip_step,
        "clip_step_images_per_s": cfg.batch / clip_step, "eclip_expert_step_s": expert_step,
        "eclip_expert_step_images_per_s": (cfg.batch + expert_batch) / expert_step,
        "main_loader_vs_clip_step": main_vs_step, "load_share_of_clip_step": main_load / clip_step,
        "load_share_of_eclip_expert_step": (main_load + expert_load) / expert_step,
        "keeps_up": main_vs_step >= 1.0,
    }


def _full_size_world(cfg: FullSizeDataConfig, syntax: str) -> tuple[list[dict], float | None]:
    """The first ``full_size_images`` items (every view) of a full-size world, and the seconds per image it
    took to generate (``None`` when it was already there)."""
    out = Path(cfg.full_size_dir) / syntax
    studies = cfg.full_size_images  # at least one image per study (about 1.3)
    fresh = not (out / "phantom_done.json").exists()
    start = time.perf_counter()
    ensure_phantom(out, studies=studies, seed=0, eval_size=0, workers=1, progress=False, egd_fraction=0.3,
                   reflacx_fraction=0.3, upscale=FULL_SIZE_UPSCALE, bits_stored=FULL_SIZE_BITS,
                   transfer_syntax=syntax)
    seconds = time.perf_counter() - start
    items = collect_items(out / "mimic-cxr", out / "egd-cxr", out / "reflacx", views=None)
    items = sorted(items, key=lambda it: it["image"])[: cfg.full_size_images]
    return items, (seconds / len(collect_items(out / "mimic-cxr", views=None)) if fresh else None)


def bench_full_size(cfg: FullSizeDataConfig) -> dict:
    """Full-size decode + VOI + resize per core, per transfer syntax, against a random shard read; then
    preprocessing (``write_shards``) time and disk per image."""
    worlds = {syntax: _full_size_world(cfg, syntax) for syntax in cfg.syntaxes}
    transform = shard_transforms(cfg.shard_size)
    result: dict = {"image_size": cfg.shard_size, "syntaxes": {}}
    with tempfile.TemporaryDirectory(prefix="bench_shards_") as tmp:
        for syntax, (items, generation) in worlds.items():
            start = time.perf_counter()
            written = write_shards(items, Path(tmp) / syntax, transform, image_size=cfg.shard_size,
                                   images_per_shard=max(1, len(items) // 2), progress=False)
            seconds = time.perf_counter() - start
            shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / syntax).glob("shard-*"))
            images = written["manifest"]["images"]
            first = ShardSet(Path(tmp) / syntax)
            records = [r for shard in range(len(first.shard_sizes)) for r in first.records(shard)]
            result["syntaxes"][syntax] = {
                "images": images, "example_size": records[0]["original_size"],
                "mean_pixels": float(np.mean([np.prod(r["original_size"]) for r in records])),
                "dicom_bytes_per_image": float(np.mean([Path(it["image"]).stat().st_size for it in items])),
                "generation_s_per_image": generation,
                "preprocess_s_per_image": seconds / images, "shard_bytes_per_image": shard_bytes / images,
            }
        shards = ShardSet(Path(tmp) / cfg.syntaxes[0], verify=True)
        rng = np.random.default_rng(0)
        picks = [shards.locate(int(i)) for i in rng.integers(0, len(shards), cfg.shard_reads)]
        for shard in range(len(shards.shard_sizes)):  # open the maps and records once, as a worker would
            shards.read(shard, 0)

        def read_shards():
            return [shards.read(shard, row) for shard, row in picks]

        contenders = {syntax: (lambda items=items: [transform({"image": it["image"]}) for it in items])
                      for syntax, (items, _) in worlds.items()}
        contenders["shard_read"] = read_shards
        bc.log(f"full-size decode + VOI + resize to {cfg.shard_size}² on 1 core ({', '.join(cfg.syntaxes)}) "
               f"vs {cfg.shard_reads} random shard reads, {cfg.repeats} interleaved rounds")
        times = bc.interleaved_rounds(contenders, cfg.repeats, warmup=True)
    for syntax, entry in result["syntaxes"].items():
        entry["decode_images_per_s"] = entry["images"] / bc.median(times[syntax])
    result["shard_read_images_per_s"] = cfg.shard_reads / bc.median(times["shard_read"])
    for syntax, entry in result["syntaxes"].items():
        entry["shard_read_speedup"] = result["shard_read_images_per_s"] / entry["decode_images_per_s"]
    return result


def run(cfg: bc.DataConfig) -> dict:
    logging.getLogger("eclip_monai").setLevel(logging.WARNING)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if getattr(cfg, "full_size_only", False):
        torch.set_num_threads(1)
        with threadpool_limits(1):
            full = bench_full_size(cfg)
        return {"config": asdict(cfg), "full_size": full, "targets": _full_size_targets(full)}
    root = ensure_phantom(cfg.data_dir, studies=cfg.studies, seed=0, eval_size=0, progress=False)
    mimic = root / "mimic-cxr"
    items = build_mimic_datalist(mimic, splits=("train", "validate", "test"))
    train = build_mimic_datalist(mimic, splits=("train",))
    expert = build_expert_datalist(train, egd_root=root / "egd-cxr", reflacx_root=root / "reflacx",
                                   mimic_root=mimic)
    bc.log(f"data path on {len(items)} phantom DICOMs ({len(expert)} with gaze) from {root}")
    result = {"config": asdict(cfg), "phantom_images": len(items), "phantom_expert_images": len(expert)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # images/s per core, as in a DataLoader worker (plus one BLAS thread)
    with tempfile.TemporaryDirectory(prefix="bench_persistent_") as cache_dir, threadpool_limits(1):
        result["dicom"] = bench_dicom(items, cfg, Path(cache_dir))
    result["heatmap"] = h = bench_heatmap(expert, read_mimic_image_sizes(mimic), cfg)
    with threadpool_limits(1):
        result["loader"] = bench_loader(train, expert, cfg)
    torch.set_num_threads(threads)
    result["loader"].update(bench_step(cfg, result["loader"]))
    if getattr(cfg, "full_size_images", 0) > 0:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            result["full_size"] = bench_full_size(cfg)
        torch.set_num_threads(threads)
    result["targets"] = {
        "heatmap_speedup": bc.target(h["speedup_vs_reference"], 20, ">=",
                                     "vectorised heatmap speed / per-fixation loop speed"),
        "heatmap_identical": bc.target(h["max_abs_diff"], HEATMAP_TOLERANCE, "<=",
                                       "max |vectorised - per-fixation loop|"),
    } | _full_size_targets(result.get("full_size"))
    return result


def _full_size_targets(full: dict | None) -> dict:
    if not full:
        return {}
    return {f"shard_read_vs_{syntax}_decode": bc.target(entry["shard_read_speedup"], SHARD_READ_TARGET, ">=",
                                                        f"shard read / full-size {syntax} decode, per core")
            for syntax, entry in full["syntaxes"].items()}


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.1f} images/s"


def report(result: dict, title: str = "Data path", level: int = 2) -> list[bc.Section]:
    sections = _phantom_report(result, title, level) if "dicom" in result else []
    if "full_size" in result:
        sections += _full_size_report(result["full_size"], result["config"], level + 1)
    return sections


SYNTAX_NAMES = {"explicit": "uncompressed (Explicit VR LE)", "rle": "RLE Lossless",
                "jpeg2000": "JPEG 2000 Lossless"}


def _full_size_report(f: dict, c: dict, level: int) -> list[bc.Section]:
    """Decode vs shard read per core; then preprocessing time and disk, projected to 10k images and MIMIC."""
    syntaxes, names, size = f["syntaxes"], SYNTAX_NAMES, f["image_size"]
    reference = next(iter(syntaxes))
    ref_rate = syntaxes[reference]["decode_images_per_s"]
    rows = [[f"full-size DICOM, {names[s]} → {size}² (decode + VOI + resize)",
             _rate(e["decode_images_per_s"]),
             "reference" if s == reference else f"{e['decode_images_per_s'] / ref_rate:.2f}x"]
            for s, e in syntaxes.items()]
    rows.append(["shard read (`ShardSet.read`, random rows, page cache)", _rate(f["shard_read_images_per_s"]),
                 f"{f['shard_read_images_per_s'] / ref_rate:.0f}x"])
    first = next(iter(syntaxes.values()))
    intro = (
        f"{first['images']} full-size phantom DICOMs per transfer syntax (`make_phantom_data.py "
        f"--full-size`: {FULL_SIZE_UPSCALE}× the drawn film, {FULL_SIZE_BITS} bits stored in 16; "
        f"{first['mean_pixels'] / 1e6:.1f} Mpx on average, e.g. {first['example_size'][0]} × "
        f"{first['example_size'][1]}), decoded by the chain `scripts/preprocess_shards.py` stores "
        f"(`eval_transforms({size}, mean=0, std=1)`), against {c['shard_reads']} random reads from the "
        f"shards it wrote; one core (torch and BLAS on one thread), {c['repeats']} interleaved rounds, "
        "medians."
    )
    speedups = ", ".join(f"{e['shard_read_speedup']:.0f}x vs {names[s]}" for s, e in syntaxes.items())
    notes = [
        f"- Shard read / full-size decode per core: {speedups} (target ≥ {SHARD_READ_TARGET}x). The shard "
        f"read is a page-cache copy of {size}² bytes and a uint8 → float32 conversion; from a cold disk the "
        f"disk bounds it instead ({size ** 2 / 1e3:.1f} kB per image: 500 MB/s is "
        f"{500e6 / size ** 2:,.0f} images/s).",
    ]
    decode = bc.Section("Full-size DICOMs vs shards", intro,
                        ("data path (1 core)", "throughput", "vs reference"), rows, notes, level)

    header = ("transfer syntax", "DICOM MB / image", "generate s / image", "preprocess s / image (1 core)",
              "DICOM MB/s per core", "core-h / 10k", "core-h for 377,110", "shard kB / image",
              "shards GB / 10k", "shards GB for 377,110", "DICOMs TB for 377,110")
    projection, wall = [], []
    for s, e in syntaxes.items():
        seconds, dicom = e["preprocess_s_per_image"], e["dicom_bytes_per_image"]
        shard, core_h = e["shard_bytes_per_image"], seconds * PER_10K / 3600
        generated = "-" if e["generation_s_per_image"] is None else f"{e['generation_s_per_image']:.2f}"
        projection.append([names[s], f"{dicom / 1e6:.1f}", generated, f"{seconds:.3f}",
                           f"{dicom / seconds / 1e6:.0f}", f"{core_h:.2f}",
                           f"{core_h * MIMIC_IMAGES / PER_10K:.0f}", f"{shard / 1e3:.1f}",
                           f"{shard * PER_10K / 1e9:.2f}", f"{shard * MIMIC_IMAGES / 1e9:.1f}",
                           f"{dicom * MIMIC_IMAGES / 1e12:.2f}"])
        wall.append(f"{names[s]} {seconds * MIMIC_IMAGES / 3600 / 16:.1f} h on 16 cores, "
                    f"{seconds * MIMIC_IMAGES / 3600 / 64:.1f} h on 64 if storage delivers "
                    f"{64 * dicom / seconds / 1e9:.2f} GB/s")
    intro = ("`write_shards(..., workers=1)` on the same DICOMs: decode, VOI, resize, uint8, write and "
             "sha256, one core; the full-size films are the drawn phantom enlarged, so decode cost and file "
             "size are realistic but compression ratios are not (`eclip_monai/data/phantom/full_size.py`).")
    notes = [
        "- Arithmetic: core-hours per 10k = s/image × 10,000 / 3,600, for MIMIC-CXR × 37.711 "
        "(377,110 / 10,000); wall time = core-hours / cores while storage keeps up (cores × MB/s per core): "
        + "; ".join(wall) + ".",
        f"- Shard bytes per image = S² ({size ** 2:,} B) + the `.npy` header's share + the JSON record "
        "(report, labels, gaze); disk per 10k = bytes × 10,000, for MIMIC-CXR × 377,110. Generation time is "
        "that of `make_phantom_data.py --full-size` (`-` when the world was already there).",
    ]
    return [decode, bc.Section("Preprocessing: time and disk", intro, header, projection, notes, level)]


def _phantom_report(result: dict, title: str, level: int) -> list[bc.Section]:
    c, d, h, lo = result["config"], result["dicom"], result["heatmap"], result["loader"]
    ref, epoch1 = d["eval_pipeline_images_per_s"], d["persistent_epoch1_images_per_s"]
    rows = [
        ["`LoadCXRDicomd` alone", _rate(d["load_only_images_per_s"]), "-"],
        ["DICOM → normalised tensor (`eval_transforms`)", _rate(ref), "reference"],
        ["`PersistentDataset`, epoch 1 (computes, writes)", _rate(epoch1), f"{epoch1 / ref:.2f}x"],
        ["`PersistentDataset`, epoch 2 (reads the cache)", _rate(d["persistent_epoch2_images_per_s"]),
         f"{d['persistent_epoch2_speedup_vs_uncached']:.1f}x"],
        ["per-fixation heatmap loop", f"{h['reference_ms_per_map']:.2f} ms/map", "reference"],
        ["`FixationsToHeatmap`, 1 BLAS thread", f"{h['vectorised_ms_per_map']:.3f} ms/map",
         f"{h['speedup_vs_reference']:.1f}x"],
        [f"`FixationsToHeatmap`, numpy BLAS on {h['blas_threads']} threads",
         f"{h['default_blas_threads_ms_per_map']:.3f} ms/map",
         f"{h['default_blas_threads_speedup_vs_reference']:.1f}x"],
        [f"CLIP-baseline training step ({lo['step_threads']} threads)", _rate(lo["clip_step_images_per_s"]),
         "reference"],
        ["train DataLoader, main batches (1 core)", _rate(lo["main_loader_images_per_s"]),
         f"{lo['main_loader_vs_clip_step']:.2f}x"],
        ["train DataLoader, expert batches with heatmaps (1 core)", _rate(lo["expert_loader_images_per_s"]),
         "-"],
    ]
    intro = (
        f"{result['phantom_images']} phantom DICOMs ({result['phantom_expert_images']} with gaze) generated "
        f"by `ensure_phantom(studies={c['studies']})`; output {c['image_size']}². Per-core figures run torch "
        "and numpy's BLAS on one thread, as a DataLoader worker does."
    )
    keeps_up = ("It keeps up when it has a core of its own (`num_workers` ≥ 1)." if lo["keeps_up"] else
                "It does not keep up even on a core of its own; more workers (more cores) are needed.")
    notes = [
        f"- Heatmaps: {h['maps']} gaze maps, {h['mean_fixations']:.0f} fixations on average (max "
        f"{h['max_fixations']}); our output equals the per-fixation loop within {h['tolerance']:g} "
        f"(max abs diff {h['max_abs_diff']:.1e}, asserted by the script).",
        f"- `FixationsToHeatmap` computes its (H×N)·(N×W) product with numpy, whose BLAS starts its own "
        f"{h['blas_threads']} threads for it; on a busy machine those threads wait for each other and the "
        f"map costs {h['default_blas_threads_ms_per_map']:.2f} ms instead of "
        f"{h['vectorised_ms_per_map']:.2f} ms on one thread. Inside DataLoader workers (one torch thread "
        "each) limiting BLAS to one thread as well (`threadpoolctl.threadpool_limits(1)`) avoids it.",
        "- The train loader (cached deterministic prefix; random crop, CLAHE, normalisation and collation "
        f"per epoch) delivers {lo['main_loader_vs_clip_step']:.2f}x the CLIP step's images/s on one core: "
        "loading in the training process (`num_workers=0`) would add "
        f"{100 * lo['load_share_of_clip_step']:.0f} % to a CLIP step and "
        f"{100 * lo['load_share_of_eclip_expert_step']:.0f} % to an eCLIP step with an expert batch. "
        + keeps_up,
    ]
    return [bc.Section(title, intro, ("data path", "throughput", "vs reference"), rows, notes, level)]


def main(argv: list[str] | None = None) -> dict:
    return bc.main(FullSizeDataConfig, __doc__, run, report, argv)


if __name__ == "__main__":
    main()
