"""The main job on the embedded phantom data, end to end in about a quarter of an hour: the study's three arms
(CLIP, eCLIP, eCLIP with random heatmaps) for one seed, each trained with ``python -m monai.bundle run``,
evaluated with ``evaluate.json`` and ``gaze_attention.json``, then one table and a plain sentence of what it
shows. ``make demo`` runs this.

    python scripts/demo.py [--seed 0] [--max_epochs 5] [--runs_dir runs/demo] [--jobs 3]

It follows the pre-registered study's protocol (``docs/study.md``) except for the training length: by default
5 epochs instead of the study's 10, so that it fits the time. One seed cannot decide anything; ``make study``
runs five paired seeds and applies the decision rule (``docs/results.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="configs/study/protocol.json")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_epochs", type=int, default=5, help="training length (the study's is 10)")
    parser.add_argument("--runs_dir", default="runs/demo", help="runs, checkpoints, logs and the demo's report")
    parser.add_argument("--jobs", type=int, default=3, help="runs at a time (one thread each)")
    return parser.parse_args(argv)


def sentence(rows: dict[str, dict], primary: str, check: dict) -> str:
    """What one seed shows, in words, without claiming more than it can."""
    clip, eclip, control = (rows[a][primary] for a in ("clip", "eclip", "eclip_random_heatmaps"))
    learned = ("The CLIP arm learned" if check.get("passed")
               else "The CLIP arm did not reach the study's learning check, so even this seed's ranking is noise")
    return (f"{learned} (CheXpert 5×200 zero-shot AUROC {clip:.3f}). On this one seed eCLIP scores {eclip:.3f} "
            f"({eclip - clip:+.3f} against CLIP) and eCLIP with random heatmaps {control:.3f}. One seed has no "
            "interval, so this says nothing yet about which is better: `make study` trains five paired seeds and "
            "decides by the pre-registered rule in docs/study.md.")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.chdir(ROOT)
    from eclip_monai.study.figures import study_figures
    from eclip_monai.study.protocol import load_protocol
    from eclip_monai.study.report import analyse, collect, learning_check
    from eclip_monai.study.runner import plan_runs, prepare, run_all

    started = time.perf_counter()
    protocol = load_protocol(args.protocol)
    study_dir = Path(args.runs_dir)
    overrides = {"max_epochs": args.max_epochs}
    runs = plan_runs(protocol, study_dir, seeds=[args.seed])
    print(f"phantom world and text features ready ({prepare(protocol, study_dir, overrides)} reports cached) "
          f"in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    run_all(protocol, runs, study_dir, overrides, jobs=args.jobs)

    collected = collect(protocol, runs)
    rows = {r["arm"]: r for r in collected["per_run"]}
    check = learning_check(protocol, collected)
    names = [e.name for e in protocol.endpoints]
    lines = [f"| endpoint | {' | '.join(rows)} |", "| --- |" + " --- |" * len(rows)]
    lines += [f"| {n} | " + " | ".join(f"{rows[a][n]:.3f}" for a in rows) + " |" for n in names]
    lines.append("| training s | " + " | ".join(f"{rows[a]['timing'].get('train_s', 0):.0f}" for a in rows) + " |")
    text = sentence(rows, protocol.primary.name, check)
    figures = study_figures(analyse(protocol, collected), protocol, runs, study_dir / "figures")
    report = "\n".join([f"# Demo: seed {args.seed}, {args.max_epochs} epochs", "", text, "", *lines, "",
                        *[f"![{f.stem}](figures/{f.name})" for f in figures]]) + "\n"
    (study_dir / "demo.md").write_text(report)
    (study_dir / "demo.json").write_text(json.dumps({"rows": rows, "learning_check": check}, indent=2) + "\n")
    print("\n".join(["", *lines, "", text, "", f"report: {study_dir / 'demo.md'}   figures: {study_dir / 'figures'}",
                     f"logs: .venv/bin/tensorboard --logdir {study_dir}",
                     f"demo finished in {(time.perf_counter() - started) / 60:.1f} min"]))


if __name__ == "__main__":
    main()
