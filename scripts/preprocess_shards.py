"""Preprocess a MIMIC-CXR tree once into shards of resized, VOI-applied images (format ``eclip-shards/1``).

    python scripts/preprocess_shards.py --phantom data/phantom --out data/shards      # the phantom world
    python scripts/preprocess_shards.py --mimic-root /data/mimic-cxr --egd-root /data/egd-cxr \\
        --reflacx-root /data/reflacx --out /data/mimic-shards --workers 32

Each image goes through the evaluation chain (``LoadCXRDicomd``: modality LUT, VOI, MONOCHROME1 inversion;
shortest side to ``--image-size``, centre crop) and is stored as uint8; reports, CheXpert labels and gaze
(fixations rescaled to the shard's pixels) travel with it. One shard per process task; killed, the same
command resumes, keeping every finished shard whose checksums match; rerun on a finished set, it only checks
the checksums. DICOMs that cannot be read are left out and listed under ``"skipped"`` in the manifest. See
``eclip_monai/data/shards.py`` for the format and ``docs/training.md`` ("Preprocess once") for the disk cost.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from eclip_monai.data.formats import FRONTAL_VIEWS
from eclip_monai.data.mimic import MIMIC_SPLITS
from eclip_monai.data.shards import DEFAULT_IMAGE_SIZE, DEFAULT_IMAGES_PER_SHARD, collect_items, write_shards
from eclip_monai.transforms.pipelines import shard_transforms

PHANTOM_DIRS = {"mimic_root": "mimic-cxr", "egd_root": "egd-cxr", "reflacx_root": "reflacx"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--mimic-root", help="MIMIC-CXR root: files/, reports and the MIMIC-CXR-JPG tables")
    source.add_argument("--phantom", help="a phantom world (scripts/make_phantom_data.py): its mimic-cxr, "
                                          "egd-cxr and reflacx folders")
    parser.add_argument("--egd-root", help="EGD-CXR root (gaze); optional")
    parser.add_argument("--reflacx-root", help="REFLACX root (gaze); optional")
    parser.add_argument("--out", required=True, help="folder of manifest.json and the shards")
    parser.add_argument("--splits", nargs="+", default=list(MIMIC_SPLITS), choices=MIMIC_SPLITS)
    parser.add_argument("--views", nargs="+", default=list(FRONTAL_VIEWS),
                        help="ViewPosition values to keep (default: %(default)s)")
    parser.add_argument("--all-views", action="store_true", help="keep every view, laterals included")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE,
                        help="side S of the stored S x S images (default %(default)s: the 1.15x pre-resize "
                             "of 224 training crops)")
    parser.add_argument("--images-per-shard", type=int, default=DEFAULT_IMAGES_PER_SHARD,
                        help="images per shard (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, one core each (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    roots = {"mimic_root": args.mimic_root, "egd_root": args.egd_root, "reflacx_root": args.reflacx_root}
    if args.phantom:
        roots = {key: str(Path(args.phantom) / folder) for key, folder in PHANTOM_DIRS.items()}
    roots = {key: str(Path(value).absolute()) for key, value in roots.items() if value}
    views = None if args.all_views else list(args.views)
    items = collect_items(roots["mimic_root"], roots.get("egd_root"), roots.get("reflacx_root"),
                          splits=args.splits, views=views)
    size = args.image_size
    settings = {**roots, "splits": list(args.splits), "views": views,
                "transform": f"eval_transforms({size}, mean=0.0, std=1.0): LoadCXRDicomd, "
                             f"ResizeShortestSided({size}, area), CenterSpatialCropd; uint8 = rint(255 x)"}
    start = time.perf_counter()
    result = write_shards(items, args.out, shard_transforms(size), image_size=size,
                          images_per_shard=args.images_per_shard, workers=args.workers, settings=settings,
                          progress=not args.no_progress)
    manifest = result["manifest"]
    summary = {"out": str(Path(args.out).absolute()), "images": manifest["images"],
               "shards": len(manifest["shards"]), "written": len(result["written"]),
               "reused": len(result["reused"]), "skipped": len(manifest["skipped"]),
               "datalist_skipped": manifest["datalist"]["skipped"],
               "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(summary, indent=2))
    for skip in manifest["skipped"][:5]:
        print(f"skipped {skip['path']}: {skip['field'] or ''} {skip['reason']}", file=sys.stderr)
    return summary


if __name__ == "__main__":
    main()
