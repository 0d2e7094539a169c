"""The main job on the embedded phantom data: generate it (if absent), then for each seed train eCLIP and the
CLIP baseline with the ``tiny_cpu`` overlay through ``python -m monai.bundle run``, evaluate both checkpoints
with ``evaluate.json`` (zero-shot, linear probe, retrieval, embedding quality) and with retrieval-based report
generation, and end with a table of mean ± std over the seeds and a verdict per metric. ``make demo`` runs this.

    python scripts/demo.py [--dataset_dir data/phantom] [--runs_dir runs/demo] [--seeds 0 1 2]
                           [--max_epochs N] [--studies N] [--skip_baseline]
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
EVALUATE = ROOT / "bundle/configs/evaluate.json"
TINY = ROOT / "configs/tiny_cpu.json"
BASELINE = ROOT / "configs/clip_baseline.json"
REPORTS = ROOT / "configs/report_generation.json"
MODELS = {"eCLIP": [TRAIN, TINY], "CLIP": [TRAIN, TINY, BASELINE]}

# The table's rows: the headline number of every evaluation (flattened metrics.json keys).
TABLE_METRICS = (
    "chexpert_5x200/zero_shot/accuracy", "chexpert_5x200/zero_shot/macro_f1", "chexpert_5x200/zero_shot/auroc",
    "chexpert_5x200/linear_probe/1%/accuracy/mean", "chexpert_5x200/linear_probe/10%/accuracy/mean",
    "chexpert_5x200/linear_probe/100%/accuracy/mean",
    "rsna_pneumonia/zero_shot/accuracy", "rsna_pneumonia/zero_shot/auroc",
    "rsna_pneumonia/linear_probe/100%/auroc/mean",
    "mimic_test/retrieval/i2t_R@1", "mimic_test/retrieval/i2t_R@5", "mimic_test/retrieval/i2t_R@10",
    "mimic_test/retrieval/t2i_R@1", "mimic_test/retrieval/t2i_R@5", "mimic_test/retrieval/t2i_R@10",
    "openi/retrieval/i2t_R@5", "openi/retrieval/t2i_R@5",
    "mimic_test/embedding_quality/modality_gap", "mimic_test/embedding_quality/alignment",
    "mimic_test/embedding_quality/uniformity_joint",
    "report_generation/finding_micro_f1", "report_generation/finding_macro_f1",
    "report_generation/bleu4", "report_generation/rougeL",
)


def bundle_command(configs: list[Path], **overrides) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str([str(c) for c in configs]),
           "--logging_file", str(ROOT / "bundle/configs/logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def run_overrides(args, seed: int) -> dict:
    overrides = {"dataset_dir": args.dataset_dir, "runs_dir": args.runs_dir, "phantom_studies": args.studies,
                 "seed": seed, "run_name": f"seed{seed}/eclip_tiny"}
    if args.max_epochs:
        overrides["max_epochs"] = args.max_epochs
    return overrides


def output_dir(configs: list[Path], overrides: dict) -> Path:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    parser.update(overrides)
    return ROOT / parser.get_parsed_content("output_dir")


def run_bundle(title: str, configs: list[Path], overrides: dict) -> None:
    cmd = bundle_command(configs, **overrides)
    print(f"\n=== {title} ===\n$ {' '.join(cmd)}\n", flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f"{title}: done in {time.time() - start:.0f} s", flush=True)


def report_generation(run_dir: Path, args) -> dict:
    """Retrieval-only report generation (the nearest training report) on the test split, scored."""
    from eclip_monai.rag.generate import load_config, run

    tiny = json.loads(TINY.read_text())
    config = load_config([REPORTS], {"dataset_dir": str(ROOT / args.dataset_dir),
                                     "model_name": tiny["model_name"], "image_size": tiny["image_size"]})
    return run(config, run_dir / "report_generation", str(run_dir / "checkpoints" / "model.pt"))


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


def train_and_evaluate(name: str, seed: int, args) -> tuple[Path, dict]:
    """Train one model for one seed, evaluate its best checkpoint; return the run folder and flat metrics."""
    from eclip_monai.evaluation.compare import flatten

    configs, overrides = MODELS[name], run_overrides(args, seed)
    run_dir = output_dir(configs, overrides)
    run_bundle(f"training {name}, seed {seed}", configs, overrides)
    run_bundle(f"evaluating {name}, seed {seed}", [*configs, EVALUATE], overrides)
    metrics = flatten(json.loads((run_dir / "eval" / "metrics.json").read_text()))
    metrics.update(flatten(report_generation(run_dir, args), "report_generation"))
    metrics.update({f"training/{k}": v for k, v in summary(name, run_dir).items()
                    if isinstance(v, (int, float))})
    return run_dir, metrics


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default="data/phantom", help="phantom data folder (generated if absent)")
    ap.add_argument("--runs_dir", default="runs/demo", help="where runs, checkpoints and figures go")
    ap.add_argument("--studies", type=int, default=600, help="phantom studies to generate")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds per model")
    ap.add_argument("--max_epochs", type=int, default=None, help="override tiny_cpu.json's epochs")
    ap.add_argument("--skip_baseline", action="store_true", help="train eCLIP only (no comparison table)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from eclip_monai.data.phantom import ensure_phantom
    from eclip_monai.evaluation.compare import compare, format_table, verdict_line

    start = time.time()
    dataset_dir = ensure_phantom(ROOT / args.dataset_dir, studies=args.studies, seed=0)
    runs_root = ROOT / args.runs_dir
    figures = runs_root / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    overlay = overlay_figure(Path(dataset_dir), figures)

    names = ["eCLIP"] if args.skip_baseline else ["eCLIP", "CLIP"]
    run_dirs: dict[str, list[Path]] = {name: [] for name in names}
    metrics: dict[str, list[dict]] = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            run_dir, flat = train_and_evaluate(name, seed, args)
            run_dirs[name].append(run_dir)
            metrics[name].append(flat)
    curve = curriculum_figure(run_dirs["eCLIP"][0], figures)
    (runs_root / "metrics_per_seed.json").write_text(json.dumps(
        {name: dict(zip(map(str, args.seeds), values)) for name, values in metrics.items()}, indent=2))

    print("\n=== training on the phantom validation split (per seed) ===")
    print(f"{'run':<8}{'seed':>6}{'InfoNCE first→last':>24}{'val mean R@1 ep1→best':>24}{'expert batches':>16}")
    for name in names:
        for seed, flat in zip(args.seeds, metrics[name]):
            loss = f"{flat['training/train_loss_first']:.3f} → {flat['training/train_loss_last']:.3f}"
            val = f"{flat['training/val_mean_R@1_first_epoch']:.3f} → {flat['training/val_mean_R@1_best']:.3f}"
            print(f"{name:<8}{seed:>6}{loss:>24}{val:>24}{int(flat['training/expert_batches']):>16}")
    if not args.skip_baseline:
        metric_names = [*TABLE_METRICS, "training/val_mean_R@1_best"]
        rows = compare(metrics["eCLIP"], metrics["CLIP"], metric_names, "eCLIP", "CLIP")
        table = format_table(rows, "eCLIP", "CLIP", len(args.seeds))
        verdict = verdict_line(rows, "eCLIP", "CLIP")
        (runs_root / "comparison.txt").write_text(table + "\n\n" + verdict + "\n")
        print(f"\n=== eCLIP vs CLIP on the phantom evaluation sets, mean ± std over seeds {args.seeds} ===")
        print(table)
        print(verdict)
    print("\nwhere things are:")
    for name, dirs in run_dirs.items():
        for run_dir in dirs:
            print(f"  {name}: TensorBoard {run_dir / 'tensorboard'}  checkpoints {run_dir / 'checkpoints'}  "
                  f"evaluation {run_dir / 'eval'}  reports {run_dir / 'report_generation'}")
    print(f"  figures: {overlay}  {curve}")
    print(f"  per-seed metrics: {runs_root / 'metrics_per_seed.json'}")
    if not args.skip_baseline:
        print(f"  comparison: {runs_root / 'comparison.txt'}")
    print(f"  view the logs: .venv/bin/tensorboard --logdir {runs_root}")
    print(f"demo finished in {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
