"""Run every benchmark in one process and write docs/performance.md and docs/performance.json.

    python scripts/bench_all.py            # full sizes (15-30 min on 2 CPU cores); also `make bench`
    python scripts/bench_all.py --quick    # smaller sizes, about 3 minutes
    python scripts/bench_all.py --smoke --out-dir /tmp/bench   # tiny sizes, seconds: checks the scripts run

Areas, each a script that also runs on its own (see its ``--help``):

1. ``bench_train_step.py``: ECLIPTrainer steps vs a plain open_clip loop; achieved FLOP/s vs a matmul.
2. ``bench_data.py``: DICOM → tensor, PersistentDataset, gaze heatmaps vs a per-fixation loop, loader vs step.
3. ``bench_retrieval.py``: torch chunked top-k vs faiss at 10k / 100k / 1M candidates; zero-shot throughput.
4. ``bench_inference.py``: image encoder latency and throughput, eager vs TorchScript vs ONNX Runtime.
5. CUDA: the training step and inference with ``--device cuda`` (bf16 AMP, vs a bf16 matmul) when a GPU is
   present; otherwise recorded as skipped.

Every figure is a ratio against a named reference measured in the same run (see each script's docstring).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import bench_common as bc
import bench_data
import bench_inference
import bench_retrieval
import bench_train_step
import torch

ROOT = Path(__file__).resolve().parent.parent

# per mode: the command-line arguments of each area
MODES = {
    "full": {
        "train_step": [],
        "data": [],
        "retrieval": [],
        "inference": [],
        "cuda_train_step": ["--device", "cuda", "--batch", "256"],
        "cuda_inference": ["--device", "cuda", "--batch", "256", "--matmul-size", "8192"],
    },
    "quick": {
        "train_step": ["--quick"],
        "data": ["--quick"],
        "retrieval": ["--quick", "--rounds", "1", "--contenders", "torch", "faiss", "gemm_only"],
        "inference": ["--quick"],
        "cuda_train_step": ["--device", "cuda", "--quick", "--batch", "128"],
        "cuda_inference": ["--device", "cuda", "--quick", "--batch", "128", "--matmul-size", "8192"],
    },
    "smoke": {
        "train_step": [
            "--image-size",
            "32",
            "--batch",
            "4",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "1",
            "--matmul-size",
            "128",
            "--contenders",
            "plain_open_clip",
            "clip_baseline",
            "eclip_expert",
            "--threads",
            "1",
        ],
        "data": ["--studies", "12", "--image-size", "32", "--batch", "4", "--repeats", "1", "--threads", "1"],
        "retrieval": [
            "--sizes",
            "3000",
            "--queries",
            "200",
            "--dim",
            "32",
            "--rounds",
            "1",
            "--contenders",
            "torch",
            "faiss",
            "--zero-shot-batch",
            "2",
            "--zero-shot-rounds",
            "1",
            "--image-size",
            "32",
            "--max-prompts",
            "2",
            "--in-process",
            "--threads",
            "1",
        ],
        "inference": [
            "--image-size",
            "32",
            "--batch",
            "2",
            "--latency-calls",
            "1",
            "--rounds",
            "1",
            "--matmul-size",
            "128",
            "--threads",
            "1",
        ],
        "cuda_train_step": [
            "--device",
            "cuda",
            "--image-size",
            "32",
            "--batch",
            "4",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "1",
        ],
        "cuda_inference": [
            "--device",
            "cuda",
            "--image-size",
            "32",
            "--batch",
            "2",
            "--latency-calls",
            "1",
            "--rounds",
            "1",
        ],
    },
}
AREAS = {
    "train_step": bench_train_step,
    "data": bench_data,
    "retrieval": bench_retrieval,
    "inference": bench_inference,
    "cuda_train_step": bench_train_step,
    "cuda_inference": bench_inference,
}


def run_all(mode: str, data_dir: str | None, areas: list[str]) -> dict:
    started = time.perf_counter()
    results = {
        "mode": mode,
        "date": datetime.date.today().isoformat(),
        "machine": bc.machine_info(),
        "command": "python scripts/bench_all.py"
        + {"full": "", "quick": " --quick", "smoke": " --smoke"}[mode],
        "areas": {},
    }
    for area in areas:
        argv = list(MODES[mode][area])
        if area == "data" and data_dir:
            argv += ["--data-dir", data_dir]
        module = AREAS[area]
        bc.log(f"\n=== {area}: {module.__name__}.py {' '.join(argv)}")
        start = time.perf_counter()
        threads = torch.get_num_threads()
        results["areas"][area] = module.run(module.parse_args(argv))
        torch.set_num_threads(threads)
        results["areas"][area]["argv"] = argv
        results["areas"][area]["wall_s"] = time.perf_counter() - start
    results["targets"] = {
        f"{area}.{key}": t for area, r in results["areas"].items() for key, t in r.get("targets", {}).items()
    }
    results["machine"]["load_average_1min_end"] = bc.machine_info().get("load_average_1min")
    results["wall_s"] = time.perf_counter() - started
    return results


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def render_markdown(r: dict) -> str:
    """docs/performance.md from the results of one run."""
    m, a = r["machine"], r["areas"]
    out = [
        "# Performance",
        "",
        f"Measured by `{r['command']}` ({r['mode']} mode, {r['date']}, {r['wall_s'] / 60:.1f} min) on "
        f"{m.get('cpu', '?')}, {m.get('cpu_count')} cores, torch {m['torch']} on {m['torch_threads']} threads"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU")
        + ". "
        f"Load average at start / end: {m.get('load_average_1min', float('nan')):.1f} / "
        f"{m.get('load_average_1min_end', float('nan')):.1f} (other jobs shared the CPU). Raw numbers: "
        "[performance.json](performance.json). Every figure is compared with a named reference measured in "
        "the "
        "same run; contenders run in interleaved rounds (A, B, A, B, ...) and report medians, so load and "
        "clock "
        "drift hit both sides alike. Each area is a script with its own `--help` under `scripts/`.",
        "",
        "## Targets",
        "",
    ]
    rows = [
        [key, t["what"], f"{t['value']:.4g}", t["target"], "met" if t["met"] else "**missed**"]
        for key, t in r["targets"].items()
    ]
    out += [bc.format_table(rows, ["target", "measured as", "value", "goal", ""]), ""]
    if "train_step" in a and "steps" in a["train_step"]:
        out += _train_section(a["train_step"], "1. Training step (CPU)")
    if "data" in a:
        out += _data_section(a["data"])
    if "retrieval" in a:
        matmul = a.get("train_step", {}).get("reference_matmul")
        out += _retrieval_section(a["retrieval"], matmul)
    if "inference" in a and "modes" in a["inference"]:
        out += _inference_section(a["inference"], "4. Inference (CPU)")
    out += ["## 5. CUDA", ""]
    for area, title in (
        ("cuda_train_step", "Training step (CUDA, bf16 AMP)"),
        ("cuda_inference", "Inference (CUDA, bf16 AMP)"),
    ):
        res = a.get(area, {})
        if "skipped" in res or not res:
            out += [
                f"{title}: skipped. {res.get('skipped', 'not run')}. The same command runs it on a GPU "
                f"machine: `python scripts/{'bench_train_step' if 'train' in area else 'bench_inference'}.py "
                "--device cuda`.",
                "",
            ]
        elif area == "cuda_train_step":
            out += _train_section(res, title, level="###")
        else:
            out += _inference_section(res, title, level="###")
    return "\n".join(out).rstrip() + "\n"


def _train_section(t: dict, title: str, level: str = "##") -> list[str]:
    c, peak = t["config"], t["reference_matmul"]
    plain = t["steps"].get("plain_open_clip", {}).get("median_step_s")
    rows = [
        [
            name,
            _fmt(s["median_step_s"] * 1e3, 1),
            _fmt(s["images_per_s"], 1),
            _fmt(s["gflop_per_step"], 1),
            _fmt(s["achieved_gflop_per_s"], 1),
            f"{100 * s['fraction_of_matmul_peak']:.1f} %",
            f"{plain / s['median_step_s']:.3f}x" if plain else "-",
        ]
        for name, s in t["steps"].items()
    ]
    lines = [
        f"{level} {title}",
        "",
        f"`{c['model']}` towers at {c['image_size']}², batch {c['batch']} (expert batch "
        f"{c['expert_batch']}), "
        f"{c['steps']} steps x {c['rounds']} interleaved rounds per contender, median per step. Reference: "
        "`plain_open_clip`, a hand loop of forward / `open_clip.loss.ClipLoss` / backward / clip / AdamW "
        "step "
        "/ schedule on the same towers and batches, no MONAI or Ignite. FLOPs per step (forward + backward) "
        f"from `FlopCounterMode`; the matrix peak is a {peak['size']}² {peak['dtype']} matmul timed in the "
        f"same run: {peak['gflop_per_s']:.0f} GFLOP/s.",
        "",
        bc.format_table(
            rows,
            [
                "step",
                "median ms",
                "main images/s",
                "GFLOP / step",
                "GFLOP/s",
                "of matmul peak",
                "throughput vs plain",
            ],
        ),
        "",
    ]
    ratios = t.get("ratios", {})
    if "clip_baseline_throughput_vs_plain_open_clip" in ratios:
        lines.append(
            f"- CLIP baseline through `ECLIPTrainer` (Ignite events, curriculum and LR handlers, "
            f"per-iteration reseeding, logged metrics): "
            f"**{ratios['clip_baseline_throughput_vs_plain_open_clip']:.3f}x** the plain loop's "
            f"throughput (per round: {_round_range(t, 'plain_open_clip', 'clip_baseline')})."
        )
    if "clip_baseline_throughput_vs_plain_open_clip" in ratios:
        lines.append(
            "- Where the per-round spread is wider than the gap to 1.0, the machine's load decided the "
            "median, "
            "not the engine; `bench_train_step.py` also times the engine's own per-step cost against the "
            "hand "
            "loop on a toy network (`engine_overhead` in its JSON)."
        )
    o = t.get("engine_overhead")
    if o:
        share = (
            f" ({100 * o['share_of_clip_step']:.2f} % of the CLIP step above)"
            if "share_of_clip_step" in o
            else ""
        )
        lines.append(
            f"- What the engine itself adds, measured apart on a toy network whose step is ~1 ms of compute: "
            f"`ECLIPTrainer` {o['trainer_ms_per_step']:.2f} ms/step vs the hand loop "
            f"{o['plain_ms_per_step']:.2f} "
            f"ms/step, i.e. {o['overhead_ms_per_step']:+.2f} ms per step{share}."
        )
    if "eclip_expert_cost_vs_clip_baseline" in ratios:
        s = t["steps"]
        flop_ratio = s["eclip_expert"]["gflop_per_step"] / s["clip_baseline"]["gflop_per_step"]
        lines.append(
            "- eCLIP step with an expert batch of B/2: "
            f"**{ratios['eclip_expert_cost_vs_clip_baseline']:.2f}x** "
            f"(per round: {_round_range(t, 'eclip_expert', 'clip_baseline')}) the CLIP step's time for "
            f"{flop_ratio:.2f}x its FLOPs (1.5x the tower work plus the heatmap "
            "processor and mixup on B/2 images)."
        )
    for name, label in (
        ("eclip_no_expert", "eCLIP step without an expert batch"),
        ("eclip_priming", "eCLIP cold-start step with the priming loss"),
    ):
        if f"{name}_cost_vs_clip_baseline" in ratios:
            lines.append(f"- {label}: {ratios[f'{name}_cost_vs_clip_baseline']:.2f}x the CLIP step.")
    return lines + [""]


def _round_range(t: dict, num: str, den: str) -> str:
    """Spread of a time ratio over the interleaved rounds: how much machine load moved it."""
    steps = t["steps"]
    ratios = [a / b for a, b in zip(steps[num]["rounds_step_s"], steps[den]["rounds_step_s"])]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _data_section(d: dict) -> list[str]:
    dc, h, lo = d["dicom"], d["heatmap"], d["loader"]
    ref = dc["eval_pipeline_images_per_s"]
    rows = [
        ["`LoadCXRDicomd` alone", f"{dc['load_only_images_per_s']:.1f} images/s", "-"],
        ["DICOM → normalised tensor (`eval_transforms`)", f"{ref:.1f} images/s", "reference"],
        [
            "`PersistentDataset`, epoch 1 (computes, writes)",
            f"{dc['persistent_epoch1_images_per_s']:.1f} images/s",
            f"{dc['persistent_epoch1_images_per_s'] / ref:.2f}x",
        ],
        [
            "`PersistentDataset`, epoch 2 (reads the cache)",
            f"{dc['persistent_epoch2_images_per_s']:.1f} images/s",
            f"{dc['persistent_epoch2_speedup_vs_uncached']:.1f}x",
        ],
        ["per-fixation heatmap loop", f"{h['reference_ms_per_map']:.2f} ms/map", "reference"],
        [
            "`FixationsToHeatmap`, 1 BLAS thread",
            f"{h['vectorised_ms_per_map']:.3f} ms/map",
            f"{h['speedup_vs_reference']:.1f}x",
        ],
        [
            f"`FixationsToHeatmap`, numpy BLAS on {h['blas_threads']} threads",
            f"{h['default_blas_threads_ms_per_map']:.3f} ms/map",
            f"{h['default_blas_threads_speedup_vs_reference']:.1f}x",
        ],
        [
            f"CLIP-baseline training step ({lo['step_threads']} threads)",
            f"{lo['clip_step_images_per_s']:.1f} images/s",
            "reference",
        ],
        [
            "train DataLoader, main batches (1 core)",
            f"{lo['main_loader_images_per_s']:.1f} images/s",
            f"{lo['main_loader_vs_clip_step']:.2f}x",
        ],
        [
            "train DataLoader, expert batches with heatmaps (1 core)",
            f"{lo['expert_loader_images_per_s']:.1f} images/s",
            "-",
        ],
    ]
    c = d["config"]
    return [
        "## 2. Data path",
        "",
        f"{d['phantom_images']} phantom DICOMs ({d['phantom_expert_images']} with gaze) generated by "
        f"`ensure_phantom(studies={c['studies']})`; output {c['image_size']}². Per-core figures run torch "
        "and "
        "numpy's BLAS on one thread, as a DataLoader worker does.",
        "",
        bc.format_table(rows, ["data path", "throughput", "vs reference"]),
        "",
        f"- Heatmaps: {h['maps']} gaze maps, {h['mean_fixations']:.0f} fixations on average (max "
        f"{h['max_fixations']}); our output equals the per-fixation loop within {h['tolerance']:g} "
        f"(max abs diff {h['max_abs_diff']:.1e}, asserted by the script).",
        f"- `FixationsToHeatmap` computes its (H×N)·(N×W) product with numpy, whose BLAS starts its own "
        f"{h['blas_threads']} threads for it; on a busy machine those threads wait for each other and the "
        "map "
        f"costs {h['default_blas_threads_ms_per_map']:.2f} ms instead of {h['vectorised_ms_per_map']:.2f} "
        "ms on "
        "one thread. Inside DataLoader workers (one torch thread each) limiting BLAS to one thread as well "
        "(`threadpoolctl.threadpool_limits(1)`) avoids it.",
        "- The train loader (cached deterministic prefix; random crop, CLAHE, normalisation and collation "
        "per "
        f"epoch) delivers {lo['main_loader_vs_clip_step']:.2f}x the CLIP step's images/s on one core: "
        "loading in "
        f"the training process (`num_workers=0`) would add {100 * lo['load_share_of_clip_step']:.0f} % to a "
        "CLIP "
        f"step and {100 * lo['load_share_of_eclip_expert_step']:.0f} % to an eCLIP step with an expert "
        "batch. "
        + (
            "It keeps up when it has a core of its own (`num_workers` ≥ 1)."
            if lo["keeps_up"]
            else "It does not keep up even on a core of its own; more workers (more cores) are needed."
        ),
        "",
    ]


def _retrieval_section(rv: dict, matmul: dict | None) -> list[str]:
    c = rv["config"]
    rows = []
    for n, e in rv["retrieval"].items():
        faiss_s = e["contenders"].get("faiss", {}).get("median_s")
        for name, s in e["contenders"].items():
            rows.append(
                [
                    f"{int(n):,}",
                    name,
                    _fmt(s["median_s"]),
                    f"{s['gflop_per_s']:.0f}",
                    f"{s['peak_extra_bytes'] / 2**20:.0f}",
                    f"{s['peak_fraction_of_full_matrix']:.4f}",
                    f"{s['median_s'] / faiss_s:.2f}x" if faiss_s else "-",
                ]
            )
    lines = [
        "## 3. Evaluation: retrieval and zero-shot",
        "",
        f"{c['queries']:,} queries, {c['dim']}-d unit vectors, k = {c['k']}, {c['threads']} threads; each "
        "search "
        "in a fresh process whose peak-RSS counter is reset before the search (peak extra memory vs the "
        "Q×N×4 bytes of a full similarity matrix). Reference: faiss exact `IndexFlatIP` search "
        "(`faiss_topk`). `gemm_only` runs the torch search's block products with no top-k, splitting its "
        "time into GEMM and top-k; `previous_torch` is the torch search before this change.",
        "",
        bc.format_table(
            rows,
            bench_retrieval.TABLE_COLUMNS,
        ),
        "",
    ]
    for n, e in rv["retrieval"].items():
        notes = [f'`topk_search(backend="auto")` uses {e["auto_backend"]}']
        if "same_neighbours_fraction" in e:
            notes.append(
                f"torch and faiss agree on {100 * e['same_neighbours_fraction']:.4f} % of the neighbours "
                + ("(the rest are near-ties; " if e["same_neighbours_fraction"] < 1 else "(")
                + f"max score difference {e['max_score_difference']:.1e})"
            )
        if "gemm_s" in e:
            notes.append(
                f"torch = {e['gemm_s']:.2f} s GEMM + {e['torch_topk_overhead_s']:.2f} s top-k "
                f"({100 * e['torch_gemm_share']:.0f} % GEMM)"
            )
        if "speedup_vs_previous_torch" in e:
            notes.append(f"speed vs the previous torch search: {e['speedup_vs_previous_torch']:.2f}x")
        lines.append(f"- {int(n):,} candidates: " + "; ".join(notes) + ".")
    big = rv["retrieval"].get("1000000")
    if big is not None:
        flops = 2 * c["queries"] * 1_000_000 * c["dim"]
        best = min(
            (x for x in ("torch", "faiss") if x in big["contenders"]),
            key=lambda x: big["contenders"][x]["median_s"],
        )
        gemm_rate = big["contenders"].get("gemm_only", big["contenders"][best])["gflop_per_s"]
        lines += [
            "",
            f"**What limits 5,000 × 1M.** The search is {flops / 1e12:.2f} TFLOP of float32 multiply-adds "
            f"(2·Q·N·D). The block products alone ran at {gemm_rate:.0f} GFLOP/s here, i.e. "
            f"{flops / gemm_rate / 1e9:.0f} s before any top-k; the fastest exact search ({best}) took "
            f"{big['contenders'][best]['median_s']:.0f} s. "
            + (
                f"The torch search's top-k added {big['torch_topk_overhead_s']:.1f} s "
                f"({100 * (1 - big['torch_gemm_share']):.0f} %) to its GEMM; faiss runs its top-k inside its "
                "block loop. "
                if "torch_topk_overhead_s" in big
                else ""
            )
            + (
                f"A {matmul['size']}² float32 matmul ran at {matmul['gflop_per_s']:.0f} GFLOP/s in the same "
                "run "
                f"(the whole product at that rate: {flops / matmul['gflop_per_s'] / 1e9:.0f} s). "
                if matmul
                else ""
            )
            + "On an otherwise idle core MKL and OpenBLAS reach 75-90 GFLOP/s here, about 30 s for the "
            "product on two idle cores, so the 60 s target is within reach only while both cores are free; "
            "with other jobs on the machine the GEMM alone takes longer. float16 / bfloat16 products are not "
            "faster on this CPU (AVX2, no AVX-512 BF16 or AMX), so exact search cannot trade precision for "
            "speed here: an approximate index (faiss IVF / HNSW) or a GPU is the way past it.",
            "",
        ]
    z = rv.get("zero_shot")
    if z:
        lines += [
            f"- Zero-shot (`{z['model']}` at {z['image_size']}², batch {z['batch']}, {z['classes']} classes, "
            f"{z['prompts']} prompts ensembled once): **{z['zero_shot_images_per_s']:.1f} images/s** for "
            "image "
            f"embedding + class scoring, against {z['image_embedding_images_per_s']:.1f} images/s for the "
            f"image embedding alone (the class scoring is a {z['classes']}-column product: "
            f"{100 * z['scoring_overhead']:+.1f} %, within the noise).",
            "",
        ]
    return lines


def _inference_section(inf: dict, title: str, level: str = "##") -> list[str]:
    c, peak = inf["config"], inf["reference_matmul"]
    rows = []
    for mode, m in inf["modes"].items():
        for name, s in m["contenders"].items():
            rows.append(
                [
                    mode.replace("_", " "),
                    m["batch"],
                    name,
                    _fmt(s["ms_per_call"]),
                    _fmt(s["images_per_s"], 1),
                    f"{s['speedup_vs_eager']:.2f}x",
                    f"{100 * s['fraction_of_matmul_peak']:.1f} %",
                    f"{s['max_abs_diff_vs_eager']:.1e}",
                ]
            )
    lines = [
        f"{level} {title}",
        "",
        f"Image encoder of `{c['model']}` at {c['image_size']}² (image → normalised embedding), "
        f"{inf['gflop_per_image']:.2f} GFLOP per image; reference: eager PyTorch under `inference_mode`. "
        f"Matrix peak: {peak['size']}² {peak['dtype']} matmul, {peak['gflop_per_s']:.0f} GFLOP/s.",
        "",
        bc.format_table(
            rows,
            [
                "mode",
                "batch",
                "runtime",
                "ms / call",
                "images/s",
                "vs eager",
                "of matmul peak",
                "max diff vs eager",
            ],
        ),
        "",
    ]
    lines.append(
        "- Batch-1 eager latency suffers most on a shared CPU: each of its many small operators waits for "
        "both OpenMP threads; ONNX Runtime runs fewer, fused kernels."
    )
    for name, note in inf.get("notes", {}).items():
        lines.append(f"- {name}: {note}")
    return lines + [""]


def main(argv: list[str] | None = None) -> dict:
    p = bc.script_parser(__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes (about 3 minutes)")
    mode.add_argument(
        "--smoke", action="store_true", help="tiny sizes (seconds): the scripts run, numbers mean nothing"
    )
    p.add_argument("--areas", nargs="+", default=list(AREAS), choices=list(AREAS))
    p.add_argument("--data-dir", default=None, help="phantom dataset of the data benchmark")
    p.add_argument("--out-dir", default=str(ROOT / "docs"), help="where performance.{md,json} are written")
    p.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="only rewrite performance.md in --out-dir from the results of an earlier run",
    )
    args = p.parse_args(argv)
    if args.render:
        results = json.loads(Path(args.render).read_text())
        (Path(args.out_dir) / "performance.md").write_text(render_markdown(results))
        print(f"wrote {Path(args.out_dir) / 'performance.md'}")
        return results
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    results = run_all(mode_name, args.data_dir, args.areas)
    out = Path(args.out_dir)
    bc.write_json(out / "performance.json", results)
    (out / "performance.md").write_text(render_markdown(results))
    print(f"wrote {out / 'performance.md'}")
    print()
    for key, t in results["targets"].items():
        print(f"{key}: {t['value']:.4g} {t['target']} -> {'met' if t['met'] else 'MISSED'}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
