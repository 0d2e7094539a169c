"""Run every benchmark in one process and write docs/performance.md and docs/performance.json.

    python scripts/bench_all.py            # full sizes (15-30 min on 2 CPU cores); also `make bench`
    python scripts/bench_all.py --quick    # smaller sizes, about 3 minutes
    python scripts/bench_all.py --smoke --out-dir /tmp/bench   # tiny sizes, seconds: checks the scripts run

Areas, each a script that also runs on its own (see its ``--help``); the settings of each mode are the
``PRESETS`` of ``bench_common.py``:

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
import time
from dataclasses import asdict, replace
from pathlib import Path

import bench_common as bc
import bench_data
import bench_inference
import bench_retrieval
import bench_train_step
import torch

ROOT = Path(__file__).resolve().parent.parent
AREAS = {  # area: (script, section title in docs/performance.md, heading level)
    "train_step": (bench_train_step, "1. Training step (CPU)", 2),
    "data": (bench_data, "2. Data path", 2),
    "retrieval": (bench_retrieval, "3. Evaluation: retrieval and zero-shot", 2),
    "inference": (bench_inference, "4. Inference (CPU)", 2),
    "cuda_train_step": (bench_train_step, "Training step (CUDA, bf16 AMP)", 3),
    "cuda_inference": (bench_inference, "Inference (CUDA, bf16 AMP)", 3),
}


def run_all(mode: str, data_dir: str | None, areas: list[str]) -> dict:
    started = time.perf_counter()
    results = {
        "mode": mode,
        "date": datetime.date.today().isoformat(),
        "machine": bc.machine_info(),
        "command": "python scripts/bench_all.py" + ("" if mode == "full" else f" --{mode}"),
        "areas": {},
    }
    for area in areas:
        module, title, level = AREAS[area]
        config = bc.PRESETS[mode][area]
        if area == "data" and data_dir:
            config = replace(config, data_dir=data_dir)
        bc.log(f"\n=== {area}: {module.__name__}.py {asdict(config)}")
        start, threads = time.perf_counter(), torch.get_num_threads()
        result = results["areas"][area] = module.run(config)
        torch.set_num_threads(threads)
        result["wall_s"] = time.perf_counter() - start
        print(bc.render(module.report(result, title, level)))
    results["targets"] = {
        f"{area}.{key}": t for area, r in results["areas"].items() for key, t in r.get("targets", {}).items()
    }
    results["machine"]["load_average_1min_end"] = bc.machine_info().get("load_average_1min")
    results["wall_s"] = time.perf_counter() - started
    return results


def render_markdown(r: dict) -> str:
    """docs/performance.md from the results of one run."""
    m = r["machine"]
    summary = (
        f"Measured by `{r['command']}` ({r['mode']} mode, {r['date']}, {r['wall_s'] / 60:.1f} min) on "
        f"{m.get('cpu', '?')}, {m.get('cpu_count')} cores, torch {m['torch']} on {m['torch_threads']} threads"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU") + ". "
        f"Load average at start / end: {m.get('load_average_1min', float('nan')):.1f} / "
        f"{m.get('load_average_1min_end', float('nan')):.1f} (other jobs shared the CPU). Raw numbers: "
        "[performance.json](performance.json). Every figure is compared with a named reference measured in "
        "the same run; contenders run in interleaved rounds (A, B, A, B, ...) and report medians, so load "
        "and clock drift hit both sides alike. Each area is a script with its own `--help` under `scripts/`."
    )
    sections = [bc.Section("Performance", summary, level=1), bc.targets_section(r["targets"])]
    for area, (module, title, level) in AREAS.items():
        if area == "cuda_train_step":
            sections.append(bc.Section("5. CUDA"))
        if area in r["areas"] or area.startswith("cuda"):
            sections += module.report(r["areas"].get(area, {"skipped": "not run"}), title, level)
    return bc.render(sections).rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes (about 3 minutes)")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny sizes (seconds): the scripts run, the numbers mean nothing")
    p.add_argument("--areas", nargs="+", default=list(AREAS), choices=list(AREAS))
    p.add_argument("--data-dir", default=None, help="phantom dataset of the data benchmark")
    p.add_argument("--out-dir", default=str(ROOT / "docs"), help="where performance.{md,json} are written")
    p.add_argument("--render", metavar="JSON", default=None,
                   help="only rewrite performance.md in --out-dir from the results of an earlier run")
    args = p.parse_args(argv)
    out = Path(args.out_dir)
    if args.render:
        results = json.loads(Path(args.render).read_text())
    else:
        mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
        results = run_all(mode_name, args.data_dir, args.areas)
        bc.write_json(out / "performance.json", results)
    (out / "performance.md").write_text(render_markdown(results))
    print(f"wrote {out / 'performance.md'}")
    if not args.render:
        print(bc.render([bc.targets_section(results["targets"])]))
    return results


if __name__ == "__main__":
    main()
