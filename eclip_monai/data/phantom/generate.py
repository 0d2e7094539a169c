"""Generate the phantom world: plan subjects and studies, draw them in a process pool, write the tables.

Every study and evaluation image gets its own child of ``numpy.random.SeedSequence(seed)``, so the output
is identical for any number of workers. ``phantom_done.json`` is written last: its presence, with the same
arguments, is what :func:`ensure_phantom` trusts. The image options (``upscale``, ``bits_stored``,
``transfer_syntax``) change only how the MIMIC-CXR films are written, never what is drawn, and are recorded
only when they differ from their defaults, so the default world and its ``phantom_done.json`` stay as they
were before the options existed.
"""

from __future__ import annotations

import inspect
import json
import multiprocessing
import shutil
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eclip_monai.data import formats
from eclip_monai.data.phantom.dicom_writer import TRANSFER_SYNTAXES
from eclip_monai.data.phantom.eval_sets import chexpert_item, openi_item, rsna_item
from eclip_monai.data.phantom.full_size import upscale_study
from eclip_monai.data.phantom.layouts import (
    egd_records,
    write_mimic_study,
    write_reflacx_reading,
    write_table,
)
from eclip_monai.data.phantom.study import simulate_study

DATASET_DIRS = {"mimic": "mimic-cxr", "egd": "egd-cxr", "reflacx": "reflacx", "chexpert": "chexpert_5x200",
                "rsna": "rsna", "openi": "openi"}
TRUTH_FILE = "phantom_truth.jsonl"  # one record per MIMIC DICOM; each evaluation set has its own
DONE_FILE = "phantom_done.json"
PARTIAL_FILE = ".phantom_partial"  # marks a folder this generator is (or was, if interrupted) writing
GENERATOR_VERSION = 1
SPLIT_FRACTIONS = {"train": 0.8, "validate": 0.1, "test": 0.1}
REFLACX_METADATA = formats.REFLACX_METADATA_CSV.format(phase=3)  # the phantom's readings are all phase 3
# (dataset folder key, file, columns, job kind, row key); the evaluation tables only when eval_size > 0
_TABLES = (
    ("mimic", formats.MIMIC_METADATA_CSV, formats.MIMIC_METADATA_COLUMNS, "mimic", "metadata"),
    ("mimic", formats.MIMIC_SPLIT_CSV, formats.MIMIC_SPLIT_COLUMNS, "mimic", "split"),
    ("mimic", formats.MIMIC_CHEXPERT_CSV, formats.MIMIC_CHEXPERT_COLUMNS, "mimic", "chexpert"),
    ("egd", formats.EGD_FIXATIONS_CSV, formats.EGD_FIXATION_COLUMNS, "mimic", "egd_fixations"),
    ("egd", formats.EGD_MASTER_SHEET_CSV, formats.EGD_MASTER_SHEET_COLUMNS, "mimic", "egd_master"),
    ("reflacx", REFLACX_METADATA, formats.REFLACX_METADATA_COLUMNS, "mimic", "reflacx"),
    ("chexpert", formats.CHEXPERT_5X200_CSV, formats.CHEXPERT_COLUMNS, "chexpert", "rows"),
    ("rsna", formats.RSNA_LABELS_CSV, formats.RSNA_LABEL_COLUMNS, "rsna", "labels"),
    ("rsna", formats.RSNA_CLASS_INFO_CSV, formats.RSNA_CLASS_INFO_COLUMNS, "rsna", "classes"),
    ("openi", formats.OPENI_REPORTS_CSV, formats.OPENI_REPORT_COLUMNS, "openi", "reports"),
    ("openi", formats.OPENI_PROJECTIONS_CSV, formats.OPENI_PROJECTION_COLUMNS, "openi", "projections"),
)


@dataclass(frozen=True)
class ImageOptions:
    """How the MIMIC-CXR films are written (see :func:`generate_phantom`); the defaults: as drawn."""

    upscale: int = 1
    bits_stored: int | None = None
    transfer_syntax: str = "explicit"


IMAGE_DEFAULTS = asdict(ImageOptions())  # the films as drawn


@dataclass(frozen=True)
class StudyPlan:
    subject_id: int
    study_id: int
    sex: str
    age: int
    split: str
    gaze: str | None = None  # egd / reflacx: this study's frontal image was read with an eye tracker
    reflacx_id: str | None = None


def plan_studies(rng: np.random.Generator, studies: int, egd_fraction: float, reflacx_fraction: float,
                 split_fractions: dict[str, float] | None = None, test_gaze_fraction: float = 0.0
                 ) -> list[StudyPlan]:
    """Subjects with 1-3 studies each, split by subject (default ~80/10/10), gaze on disjoint slices of train
    and, with ``test_gaze_fraction``, REFLACX readings of that share of the test split (held-out gaze, as
    REFLACX's own test readings are: never seen in training, used to score where a model looks)."""
    fractions = SPLIT_FRACTIONS if split_fractions is None else split_fractions
    per_subject: list[int] = []
    while sum(per_subject) < studies:
        per_subject.append(min(int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12])), studies - sum(per_subject)))
    subjects = np.sort(rng.choice(10_000_000, size=len(per_subject), replace=False) + 10_000_000)
    study_ids = rng.choice(10_000_000, size=studies, replace=False) + 50_000_000
    order = rng.permutation(len(subjects))
    n_validate = round(len(subjects) * fractions["validate"])
    n_test = round(len(subjects) * fractions["test"])
    if len(subjects) >= 3:
        n_validate, n_test = max(1, n_validate), max(1, n_test)
    split_of = {int(i): "validate" for i in order[:n_validate]}
    split_of.update({int(i): "test" for i in order[n_validate : n_validate + n_test]})

    plans, cursor = [], 0
    for i, (subject, count) in enumerate(zip(subjects, per_subject)):
        sex, age = str(rng.choice(["F", "M"])), int(rng.integers(18, 91))
        for study_id in study_ids[cursor : cursor + count]:
            plans.append(StudyPlan(int(subject), int(study_id), sex, age, split_of.get(i, "train")))
        cursor += count
    train = rng.permutation([i for i, p in enumerate(plans) if p.split == "train"])
    n_egd, n_reflacx = round(egd_fraction * len(train)), round(reflacx_fraction * len(train))
    reflacx_numbers = rng.choice(1_000_000, size=n_reflacx, replace=False)
    for i in train[:n_egd]:
        plans[i] = replace(plans[i], gaze="egd")
    for i, number in zip(train[n_egd : n_egd + n_reflacx], reflacx_numbers):
        plans[i] = replace(plans[i], gaze="reflacx", reflacx_id=f"P300R{int(number):06d}")
    if test_gaze_fraction > 0:  # drawn last, so worlds without held-out gaze stay as they were
        test = rng.permutation([i for i, p in enumerate(plans) if p.split == "test"])
        taken = set(int(n) for n in reflacx_numbers)
        free = np.array([n for n in rng.choice(1_000_000, size=2 * len(test) + len(taken), replace=False)
                         if int(n) not in taken])
        for i, number in zip(test[: round(test_gaze_fraction * len(test))], free):
            plans[i] = replace(plans[i], gaze="reflacx", reflacx_id=f"P300R{int(number):06d}")
    return plans


def _draw_mimic(out: Path, plan: StudyPlan, seed: np.random.SeedSequence,
                images: ImageOptions) -> dict[str, list]:
    study = simulate_study(seed, subject_id=plan.subject_id, study_id=plan.study_id, sex=plan.sex,
                           age=plan.age, read_with_gaze=plan.gaze is not None)
    if images.upscale > 1 or images.bits_stored is not None:
        study = upscale_study(study, images.upscale, images.bits_stored)
    rows = write_mimic_study(out / DATASET_DIRS["mimic"], study, plan.split, images.transfer_syntax)
    for record in rows["truth"]:  # gaze was recorded on the frontal image (the first) only
        frontal = record is rows["truth"][0]
        record.update(gaze=plan.gaze if frontal else None, reflacx_id=plan.reflacx_id if frontal else None)
    rng = np.random.default_rng(study.format_seed)
    if plan.gaze == "egd":
        master, fixations = egd_records(study, rng)
        rows.update(egd_master=[master], egd_fixations=fixations)
    elif plan.gaze == "reflacx":
        reflacx = out / DATASET_DIRS["reflacx"]
        rows["reflacx"] = [write_reflacx_reading(reflacx, plan.reflacx_id, study, plan.split, rng)]
    return rows


def _draw(job: tuple) -> tuple[str, dict[str, list]]:
    """Run one job in a worker: draw, write its own files, return its table rows."""
    kind, out, seed, argument = job[:4]
    if kind == "mimic":
        return kind, _draw_mimic(out, argument, seed, job[4])
    root = out / DATASET_DIRS[kind]
    if kind == "chexpert":
        return kind, chexpert_item(root, argument[0], argument[1], seed)
    if kind == "rsna":
        return kind, rsna_item(root, argument, seed)
    return kind, openi_item(root, argument, seed)


def _eval_jobs(out: Path, seed: np.random.SeedSequence, eval_size: int) -> list[tuple]:
    """``eval_size`` images per set; CheXpert 5x200 rounds down to a multiple of 5 and is 200 per class at
    ``eval_size=1000``, the public benchmark's size."""
    if eval_size <= 0:
        return []
    chexpert_seed, rsna_seed, openi_seed = seed.spawn(3)
    classes = formats.CHEXPERT_5X200_CLASSES
    n_chexpert = max(1, eval_size // len(classes)) * len(classes)
    n_rsna = max(2, eval_size)
    jobs = [("chexpert", out, s, (i, classes[i % len(classes)]))
            for i, s in enumerate(chexpert_seed.spawn(n_chexpert))]
    jobs += [("rsna", out, s, i % 2 == 0) for i, s in enumerate(rsna_seed.spawn(n_rsna))]
    jobs += [("openi", out, s, i + 1) for i, s in enumerate(openi_seed.spawn(eval_size))]
    return jobs


def _run(jobs: list[tuple], workers: int, progress: bool) -> list[tuple[str, dict]]:
    bar = tqdm(total=len(jobs), desc="phantom", unit="item", disable=not progress)
    results = []
    if workers <= 1:
        for job in jobs:
            results.append(_draw(job))
            bar.update()
    else:  # spawn: workers never inherit a parent's threads or locks (torch, OpenMP)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for result in pool.imap(_draw, jobs, chunksize=4):
                results.append(result)
                bar.update()
    bar.close()
    return results


def _prepare(out: Path) -> None:
    """Remove a previous phantom's outputs; refuse to touch a folder this generator did not write."""
    ours = [out / d for d in DATASET_DIRS.values()] + [out / TRUTH_FILE, out / DONE_FILE]
    present = [p.name for p in ours if p.exists()]
    if present and not (out / DONE_FILE).exists() and not (out / PARTIAL_FILE).exists():
        raise FileExistsError(f"{out} already holds {present} but no {DONE_FILE}: it is not a phantom "
                              "folder, so nothing was overwritten; choose another --out")
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / PARTIAL_FILE).write_text("")


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _arguments(studies: int, seed: int, egd_fraction: float, reflacx_fraction: float, eval_size: int,
               split_fractions: dict[str, float] | None, test_gaze_fraction: float, upscale: int = 1,
               bits_stored: int | None = None, transfer_syntax: str = "explicit") -> dict:
    """Everything that decides the world's content: ``phantom_done.json`` records it, and a comparison names
    it. An image option enters only with a value other than its default (a default world's record is as it
    was before the options existed)."""
    images = {"upscale": upscale, "bits_stored": bits_stored, "transfer_syntax": transfer_syntax}
    return {"version": GENERATOR_VERSION, "studies": studies, "seed": seed, "egd_fraction": egd_fraction,
            "reflacx_fraction": reflacx_fraction, "eval_size": eval_size,
            "split_fractions": dict(split_fractions or SPLIT_FRACTIONS),
            "test_gaze_fraction": test_gaze_fraction,
            **{key: value for key, value in images.items() if value != IMAGE_DEFAULTS[key]}}


def generate_phantom(
    out_dir: str | Path,
    studies: int = 1000,
    seed: int = 0,
    workers: int = 2,
    egd_fraction: float = 0.1,
    reflacx_fraction: float = 0.1,
    eval_size: int = 50,
    progress: bool = True,
    split_fractions: dict[str, float] | None = None,
    test_gaze_fraction: float = 0.0,
    upscale: int = 1,
    bits_stored: int | None = None,
    transfer_syntax: str = "explicit",
) -> dict:
    """Write the phantom world under ``out_dir``; return counts and paths (also in ``phantom_done.json``).

    Args:
        studies: MIMIC-CXR studies (one frontal image each, a lateral in about a third).
        egd_fraction / reflacx_fraction: share of the train split's frontal images read for each gaze set.
        eval_size: images per evaluation set (CheXpert 5x200 rounds down to a multiple of 5).
        workers: processes drawing studies; the output does not depend on it.
        split_fractions: share of subjects per split, ``{"train", "validate", "test"}`` (default 0.8/0.1/0.1).
        test_gaze_fraction: share of test-split frontal images that also get a REFLACX reading (held-out gaze).
        upscale: integer enlargement of every MIMIC-CXR film (``full_size.FULL_SIZE_UPSCALE`` = 7 gives
            MIMIC's ~3,000 × 2,500 pixels; gaze, findings and spacing follow); :mod:`.full_size` says what is
            realistic about such films and what is not.
        bits_stored: stored bits of every MIMIC-CXR film (12 for MIMIC's detectors); ``None`` keeps the drawn
            mix of 12-16 bits.
        transfer_syntax: ``"explicit"`` (uncompressed Explicit VR Little Endian), ``"rle"`` (RLE Lossless) or
            ``"jpeg2000"`` (JPEG 2000 Lossless) for the MIMIC-CXR DICOMs; evaluation sets keep their formats.
    """
    if studies < 1 or eval_size < 0 or workers < 1:
        raise ValueError(f"need studies >= 1, eval_size >= 0, workers >= 1; "
                         f"got {studies}, {eval_size}, {workers}")
    if not (0 <= egd_fraction and 0 <= reflacx_fraction and egd_fraction + reflacx_fraction <= 1):
        raise ValueError(f"gaze fractions must be >= 0 and sum to <= 1; "
                         f"got {egd_fraction} + {reflacx_fraction}")
    fractions = dict(split_fractions or SPLIT_FRACTIONS)
    if set(fractions) != set(SPLIT_FRACTIONS) or min(fractions.values()) < 0 or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"split_fractions must give {sorted(SPLIT_FRACTIONS)} shares >= 0 summing to 1; "
                         f"got {split_fractions}")
    if not 0 <= test_gaze_fraction <= 1:
        raise ValueError(f"test_gaze_fraction must be in [0, 1]; got {test_gaze_fraction}")
    if int(upscale) != upscale or upscale < 1 or bits_stored not in (None, *range(8, 17)):
        raise ValueError(f"need an integer upscale >= 1 and bits_stored None or 8-16; got {upscale}, "
                         f"{bits_stored}")
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(f"transfer_syntax must be one of {sorted(TRANSFER_SYNTAXES)}; "
                         f"got {transfer_syntax!r}")
    images = ImageOptions(int(upscale), bits_stored, transfer_syntax)
    started = time.perf_counter()
    out = Path(out_dir)
    _prepare(out)
    plan_seed, study_seed, eval_seed = np.random.SeedSequence(seed).spawn(3)
    plans = plan_studies(np.random.default_rng(plan_seed), studies, egd_fraction, reflacx_fraction,
                         fractions, test_gaze_fraction)
    jobs = [("mimic", out, s, p, images) for p, s in zip(plans, study_seed.spawn(len(plans)))]
    jobs += _eval_jobs(out, eval_seed, eval_size)
    tables: dict[tuple[str, str], list] = defaultdict(list)
    for kind, rows in _run(jobs, workers, progress):
        for key, values in rows.items():
            tables[kind, key].extend(values)

    for dataset, name, columns, kind, key in _TABLES:
        if kind == "mimic" or eval_size > 0:
            write_table(out / DATASET_DIRS[dataset] / name, columns, tables[kind, key])
    _write_jsonl(out / TRUTH_FILE, tables["mimic", "truth"])
    for kind in ("chexpert", "rsna", "openi") if eval_size > 0 else ():
        _write_jsonl(out / DATASET_DIRS[kind] / TRUTH_FILE, tables[kind, "truth"])

    truth = tables["mimic", "truth"]
    summary = {
        "studies": len(plans),
        "subjects": len({p.subject_id for p in plans}),
        "images": len(truth),
        "lateral_images": sum(r["view"] not in formats.FRONTAL_VIEWS for r in truth),
        "splits": {s: sum(p.split == s for p in plans) for s in SPLIT_FRACTIONS},
        "egd_images": len(tables["mimic", "egd_master"]),
        "egd_fixations": len(tables["mimic", "egd_fixations"]),
        "reflacx_readings": len(tables["mimic", "reflacx"]),
        "test_gaze_readings": sum(r["split"] == "test" for r in tables["mimic", "reflacx"]),
        "chexpert_5x200_images": len(tables["chexpert", "rows"]),
        "rsna_images": len(tables["rsna", "classes"]),
        "openi_studies": len(tables["openi", "reports"]),
        "paths": {k: str(out / d) for k, d in DATASET_DIRS.items()} | {"truth": str(out / TRUTH_FILE)},
    }
    arguments = _arguments(studies, seed, egd_fraction, reflacx_fraction, eval_size, fractions,
                           test_gaze_fraction, int(upscale), bits_stored, transfer_syntax)
    (out / DONE_FILE).write_text(json.dumps({"arguments": arguments, "summary": summary}, indent=2) + "\n")
    (out / PARTIAL_FILE).unlink()
    return summary | {"seconds": round(time.perf_counter() - started, 2)}


def ensure_phantom(out_dir: str | Path, studies: int = 1000, seed: int = 0, **options) -> Path:
    """Return ``out_dir``, generating it first (``generate_phantom(out_dir, studies, seed, **options)``) unless
    ``phantom_done.json`` records these same world-defining arguments (``workers`` and ``progress`` do not
    change the world)."""
    out = Path(out_dir)
    bound = inspect.signature(generate_phantom).bind(out, studies, seed, **options)
    bound.apply_defaults()
    world = {k: v for k, v in bound.arguments.items() if k not in ("out_dir", "workers", "progress")}
    done = out / DONE_FILE
    if done.is_file() and json.loads(done.read_text()).get("arguments") == _arguments(**world):
        return out
    generate_phantom(*bound.args, **bound.kwargs)
    return out
