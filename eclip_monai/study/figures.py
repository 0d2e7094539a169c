"""Figures of a study: training loss against ln(B) per arm, and the paired per-seed differences."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from eclip_monai.study.protocol import Protocol  # noqa: E402
from eclip_monai.study.runner import RunSpec  # noqa: E402

__all__ = ["loss_curves", "read_scalars", "study_figures"]


def read_scalars(tensorboard_dir: str | Path, tag: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one scalar tag from a run's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(tensorboard_dir).is_dir():  # a run not started yet
        return [], []
    accumulator = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return [], []
    events = accumulator.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def _smooth(values: Sequence[float], window: int = 10) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_curves(runs: Sequence[RunSpec], batch_size: int, path: Path) -> Path | None:
    """InfoNCE per step (10-step moving average) of every run, coloured by arm, against ln(B): a model that
    has learned nothing sits at ln(B)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    colours: dict[str, str] = {}
    for run in runs:
        steps, values = read_scalars(run.run_dir / "tensorboard", "loss_clip")
        if not steps:
            continue
        colour = colours.setdefault(run.arm, f"C{len(colours)}")
        ax.plot(steps, _smooth(values), color=colour, alpha=0.6, lw=1,
                label=run.arm if list(colours).index(run.arm) == len(colours) - 1 and run.seed == runs[0].seed
                else None)
    if not colours:
        plt.close(fig)
        return None
    ax.axhline(math.log(batch_size), color="k", ls="--", lw=1, label=f"ln B = ln {batch_size} (chance)")
    ax.set_xlabel("training step")
    ax.set_ylabel("InfoNCE (main + expert pairs)")
    ax.set_title("Training loss of every run")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def paired_differences(rows: Sequence[dict], path: Path, title: str) -> Path | None:
    """One panel per contrast: per-seed differences (dots) and the mean with its 95 % interval (bar)."""
    contrasts = list(dict.fromkeys(r["contrast"] for r in rows))
    if not contrasts:
        return None
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(1, len(contrasts), figsize=(5 * len(contrasts), 0.45 * len(metrics) + 1.5),
                             squeeze=False, sharey=True)
    for ax, contrast in zip(axes[0], contrasts):
        for y, metric in enumerate(metrics):
            row = next((r for r in rows if r["contrast"] == contrast and r["metric"] == metric), None)
            if row is None:
                continue
            ax.scatter(row["diffs"], [y] * len(row["diffs"]), s=12, color="C0", alpha=0.7)
            if not math.isnan(row["ci_low"]):
                ax.plot([row["ci_low"], row["ci_high"]], [y, y], color="C3", lw=2)
            ax.scatter([row["mean_diff"]], [y], marker="|", s=200, color="C3")
        ax.axvline(0, color="k", lw=1)
        ax.set_title(contrast, fontsize=10)
        ax.set_xlabel("difference (a − b)")
    axes[0][0].set_yticks(range(len(metrics)), metrics, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def study_figures(analysis: dict, protocol: Protocol, runs: Sequence[RunSpec], out_dir: Path) -> list[Path]:
    """Every figure the report links: loss curves, paired differences, and the attention figure that the
    first seed's gaze-attention step of each arm drew (copied next to the report)."""
    regime = json.loads(Path(protocol.regime).read_text())
    figures = [
        loss_curves(runs, int(regime.get("batch_size", 64)), out_dir / "study_loss_curves.png"),
        paired_differences(analysis["contrasts"], out_dir / "study_paired_differences.png",
                           "Per-seed paired differences (dots) with mean and 95 % t-interval"),
    ]
    if analysis.get("ablations", {}).get("rows"):
        figures.append(paired_differences(analysis["ablations"]["rows"], out_dir / "study_ablations.png",
                                          "Ablations: eCLIP minus each ablation, primary endpoint"))
    first_seed = runs[0].seed if runs else None
    for run in runs:
        drawn = run.run_dir / "eval" / "gaze_attention.png"
        if run.seed == first_seed and drawn.is_file():
            target = out_dir / f"study_attention_{run.arm}.png"
            shutil.copyfile(drawn, target)
            figures.append(target)
    return [f for f in figures if f is not None]
