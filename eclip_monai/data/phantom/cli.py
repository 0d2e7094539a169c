"""``make_phantom_data`` / ``eclip-phantom``: write the phantom world from the command line."""

from __future__ import annotations

import argparse
import json

from eclip_monai.data.phantom.dicom_writer import TRANSFER_SYNTAXES
from eclip_monai.data.phantom.full_size import FULL_SIZE_BITS, FULL_SIZE_UPSCALE
from eclip_monai.data.phantom.generate import ensure_phantom, generate_phantom


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder to write the datasets into")
    parser.add_argument("--studies", type=int, default=1000, help="MIMIC-CXR studies to draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes (the output does not depend on it)")
    parser.add_argument("--egd-fraction", type=float, default=0.1, help="train frontal share in EGD-CXR")
    parser.add_argument("--reflacx-fraction", type=float, default=0.1, help="train frontal share in REFLACX")
    parser.add_argument("--eval-size", type=int, default=50, help="images per evaluation set (0: none)")
    parser.add_argument("--split-fractions", type=float, nargs=3, metavar=("TRAIN", "VALIDATE", "TEST"),
                        help="share of subjects per split (default 0.8 0.1 0.1)")
    parser.add_argument("--test-gaze-fraction", type=float, default=0.0,
                        help="test frontal share with a held-out REFLACX reading")
    parser.add_argument("--full-size", action="store_true",
                        help=f"MIMIC-sized films: --upscale {FULL_SIZE_UPSCALE} --bits-stored "
                             f"{FULL_SIZE_BITS} (about 14 MB per uncompressed DICOM)")
    parser.add_argument("--upscale", type=int, default=None,
                        help="integer enlargement of the MIMIC-CXR films (default 1: ~400 px as drawn)")
    parser.add_argument("--bits-stored", type=int, default=None,
                        help="stored bits of the MIMIC-CXR films (default: the drawn mix of 12-16)")
    parser.add_argument("--transfer-syntax", choices=sorted(TRANSFER_SYNTAXES), default="explicit",
                        help="MIMIC-CXR pixel data: uncompressed (explicit) or lossless RLE / JPEG 2000")
    parser.add_argument("--force", action="store_true", help="regenerate even if the folder already matches")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    upscale = args.upscale or (FULL_SIZE_UPSCALE if args.full_size else 1)
    bits_stored = args.bits_stored or (FULL_SIZE_BITS if args.full_size else None)
    options = dict(studies=args.studies, seed=args.seed, workers=args.workers, egd_fraction=args.egd_fraction,
                   reflacx_fraction=args.reflacx_fraction, eval_size=args.eval_size,
                   progress=not args.no_progress, test_gaze_fraction=args.test_gaze_fraction,
                   split_fractions=None if args.split_fractions is None
                   else dict(zip(("train", "validate", "test"), args.split_fractions)),
                   upscale=upscale, bits_stored=bits_stored, transfer_syntax=args.transfer_syntax)
    if args.force:
        summary = generate_phantom(args.out, **options)
    else:
        done = ensure_phantom(args.out, **options) / "phantom_done.json"
        summary = json.loads(done.read_text())["summary"]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
