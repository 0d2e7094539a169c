"""The main job on the embedded phantom data: generate it (if absent), train eCLIP and the CLIP baseline with
the ``tiny_cpu`` overlay through ``python -m monai.bundle run``, then draw the figures and print where
everything is. ``make demo`` runs this.

    python scripts/demo.py [--dataset_dir data/phantom] [--runs_dir runs/demo] [--max_epochs N] [--studies N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "bundle/configs/train.json"
TINY = ROOT / "configs/tiny_cpu.json"
BASELINE = ROOT / "configs/clip_baseline.json"


def bundle_command(configs: list[Path], **overrides) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([str(c) for c in configs]),
           "--logging_file", str(ROOT / "bundle/configs/logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def train(name: str, configs: list[Path], args) -> Path:
    overrides = {"dataset_dir": args.dataset_dir, "runs_dir": args.runs_dir, "phantom_studies": args.studies}
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    cmd = bundle_command(configs, **overrides)
    print(f"\n=== training {name} ===\n$ {' '.join(cmd)}\n", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"{name}: trained in {time.time() - start:.0f} s", flush=True)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    return ROOT / parser.get_parsed_content("output_dir")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """All TensorBoard scalars of a run: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def overlay_figure(dataset_dir: Path, out: Path) -> Path:
    """One phantom image with its radiologist-style gaze heatmap and fixations."""
    from eclip_monai.data import build_expert_datalist, build_mimic_datalist
    from eclip_monai.transforms import FixationsToHeatmap, LoadCXRDicom
    from eclip_monai.visualize import save_overlay_png

    mimic = dataset_dir / "mimic-cxr"
    datalist = build_mimic_datalist(mimic, splits=["train"])
    expert = build_expert_datalist(datalist, egd_root=dataset_dir / "egd-cxr",
                                   reflacx_root=dataset_dir / "reflacx", mimic_root=mimic)
    item = next(i for i in expert if "normal" not in i["report"].lower()) if expert else None
    if item is None:
        raise SystemExit("the phantom dataset has no gaze; regenerate it")
    image = LoadCXRDicom()(item["image"])
    heatmap = FixationsToHeatmap(sigma=1.0, sigma_unit="deg", default_pixels_per_degree=20.0)(
        item["fixations"], image.shape[1:], pixels_per_degree=item["pixels_per_degree"])
    path = out / "gaze_overlay.png"
    title = textwrap.shorten(item["report"], 60, placeholder="…")
    save_overlay_png(image, heatmap, path, fixations=item["fixations"], title=title)
    return path


def curriculum_figure(run_dir: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = scalars(run_dir)
    steps, used = zip(*data["expert_used"])  # iteration-level scalars only
    p_at = dict(data["expert_p"])
    p = [p_at[s] for s in steps]
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=120)
    ax.plot(steps, p, label="expert probability p")
    window = max(1, len(used) // 20)
    ax.plot(steps, np.convolve(used, np.ones(window) / window, mode="same"), alpha=0.7,
            label=f"expert batches used (moving mean, {window} steps)")
    ax.set_xlabel("iteration")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("eCLIP curriculum: cold start, warm-up, cool-down")
    fig.tight_layout()
    path = out / "curriculum.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(name: str, run_dir: Path) -> dict:
    data = scalars(run_dir)
    loss = [v for _, v in data.get("loss_clip", [])]  # without the priming term, comparable across runs
    val = [v for _, v in data.get("val_mean_R@1", [])]
    k = max(1, len(loss) // 10)
    return {
        "run": name,
        "train_loss_first": sum(loss[:k]) / k if loss else None,
        "train_loss_last": sum(loss[-k:]) / k if loss else None,
        "val_mean_R@1_first_epoch": val[0] if val else None,
        "val_mean_R@1_best": max(val) if val else None,
        "expert_batches": int(data["expert_batches"][-1][1]) if "expert_batches" in data else 0,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="data/phantom", help="phantom data folder (generated if absent)")
    ap.add_argument("--runs_dir", default="runs/demo", help="where runs, checkpoints and figures go")
    ap.add_argument("--studies", type=int, default=600, help="phantom studies to generate")
    ap.add_argument("--max_epochs", type=int, default=None, help="override tiny_cpu.json's epochs")
    ap.add_argument("--skip_baseline", action="store_true", help="train eCLIP only")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from eclip_monai.data.phantom import ensure_phantom

    dataset_dir = ensure_phantom(ROOT / args.dataset_dir, studies=args.studies, seed=0)
    figures = ROOT / args.runs_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    overlay = overlay_figure(Path(dataset_dir), figures)

    runs = {"eCLIP": train("eCLIP", [TRAIN, TINY], args)}
    if not args.skip_baseline:
        runs["CLIP baseline"] = train("CLIP baseline", [TRAIN, TINY, BASELINE], args)
    curve = curriculum_figure(runs["eCLIP"], figures)

    results = [summary(name, run_dir) for name, run_dir in runs.items()]
    (ROOT / args.runs_dir / "summary.json").write_text(json.dumps(results, indent=2))
    print("\n=== results on the phantom validation split ===")
    print(f"{'run':<15}{'InfoNCE first→last':>24}{'val mean R@1 ep1→best':>24}{'expert batches':>16}")
    for r in results:
        loss = f"{r['train_loss_first']:.3f} → {r['train_loss_last']:.3f}" if r["train_loss_first"] else "-"
        val = f"{r['val_mean_R@1_first_epoch']:.3f} → {r['val_mean_R@1_best']:.3f}" if r["val_mean_R@1_best"] else "-"
        print(f"{r['run']:<15}{loss:>24}{val:>24}{r['expert_batches']:>16}")
    print("\nwhere things are:")
    for name, run_dir in runs.items():
        print(f"  {name}: TensorBoard logs {run_dir / 'tensorboard'}  checkpoints {run_dir / 'checkpoints'}")
    print(f"  figures: {overlay}  {curve}")
    print(f"  summary: {ROOT / args.runs_dir / 'summary.json'}")
    print(f"  view the logs: .venv/bin/tensorboard --logdir {ROOT / args.runs_dir}")


if __name__ == "__main__":
    main()
