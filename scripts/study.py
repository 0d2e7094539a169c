"""The pre-registered eCLIP-vs-CLIP study: every arm × seed trained, evaluated and scored, then the paired
analysis written to ``docs/results.{md,json}`` with figures in ``docs/figures/``.

    .venv/bin/python scripts/study.py                 # the main study (make study)
    .venv/bin/python scripts/study.py --ablations     # the ablations, paired with the main study's eCLIP runs
    .venv/bin/python scripts/study.py --report_only   # rebuild the report from the runs on disk

The protocol (``configs/study/protocol.json``, described in ``docs/study.md``) fixes the arms, seeds, endpoints
and decision rule; this command only carries it out. Runs are resumable: rerun the same command after an
interruption and finished steps are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="configs/study/protocol.json")
    parser.add_argument("--study_dir", default="runs/study", help="where runs, checkpoints and logs go")
    parser.add_argument("--out", default="docs", help="folder of results.md / results.json / figures")
    parser.add_argument("--ablations", action="store_true", help="run the protocol's ablations instead")
    parser.add_argument("--seeds", type=int, nargs="*", help="subset of the protocol's seeds (smoke runs)")
    parser.add_argument("--arms", nargs="*", help="subset of the protocol's arms")
    parser.add_argument("--report_only", action="store_true", help="only rebuild the report")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each on cpu_count / jobs threads")
    parser.add_argument("--with_ablations", action="store_true", help="the main study, then the ablations")
    parser.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="bundle override for every run (smoke tests only: the protocol is then not followed)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.chdir(ROOT)  # overlays and bundle configs are named relative to the repository
    from eclip_monai.study.figures import study_figures
    from eclip_monai.study.protocol import load_protocol
    from eclip_monai.study.report import analyse, collect, verdict, write_report
    from eclip_monai.study.runner import plan_runs, prepare, run_all

    protocol = load_protocol(args.protocol)
    study_dir = Path(args.study_dir)
    overrides = dict(args.override)
    main_runs = plan_runs(protocol, study_dir, seeds=args.seeds, arms=args.arms)
    ablation_runs = plan_runs(protocol, study_dir, ablations=True, seeds=args.seeds)

    def report(*_) -> None:
        ablation = collect(protocol, ablation_runs) if any(r.gaze_file.is_file() for r in ablation_runs) else None
        analysis = analyse(protocol, collect(protocol, main_runs), ablation)
        analysis["overrides"] = overrides
        figures = study_figures(analysis, protocol, main_runs, Path(args.out) / "figures")
        text = verdict(analysis, protocol)
        paths = write_report(analysis, protocol, args.out, text, [str(Path(f).relative_to(args.out)) for f in figures])
        print(text, file=sys.stderr)
        print("wrote", *map(str, paths), file=sys.stderr)

    if not args.report_only:
        runs = ablation_runs if args.ablations else main_runs
        if args.ablations:  # the reference arm's runs of the ablation seeds are part of the main study
            runs = plan_runs(protocol, study_dir, seeds=args.seeds or protocol.ablation_seeds,
                             arms=[protocol.ablation_reference]) + runs
        elif args.with_ablations:
            runs = runs + ablation_runs
        print(f"prepared: {prepare(protocol, study_dir, overrides)} report features cached", file=sys.stderr)
        run_all(protocol, runs, study_dir, overrides, on_done=report, jobs=args.jobs)
    report()
    print(json.dumps({"study_dir": str(study_dir), "out": args.out}), file=sys.stderr)


if __name__ == "__main__":
    main()
