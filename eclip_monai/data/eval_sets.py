"""Evaluation-set datalists in the public releases' layouts: CheXpert 5×200, RSNA Pneumonia, NIH CXR14, OpenI.

Each loader returns an :class:`EvalSet`: a :class:`~eclip_monai.data.mimic.Datalist` of MONAI data dicts
``{"image": absolute path, "label": class index or multi-hot float32 array}`` (OpenI: ``{"image", "report",
"uid"}``) and the class names the labels index. A missing table or column, or a label the release never
holds, raises :class:`~eclip_monai.errors.CXRDataError` naming the file, column and line; a missing image or
an empty report skips that item and is counted on the datalist, so one lost file does not end an evaluation.
Images are DICOM (RSNA) or PNG/JPG (the others); ``transforms.io.LoadCXRImaged`` reads both.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from eclip_monai.data.formats import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_5X200_CSV,
    CXR14_CLASSES,
    CXR14_CSV,
    CXR14_IMAGE_DIR,
    OPENI_IMAGE_DIR,
    OPENI_PROJECTIONS_CSV,
    OPENI_REPORTS_CSV,
    RSNA_IMAGE_DIR,
    RSNA_LABELS_CSV,
)
from eclip_monai.data.mimic import Datalist, read_csv
from eclip_monai.errors import CXRDataError

__all__ = [
    "RSNA_CLASSES",
    "EvalSet",
    "load_chexpert_5x200",
    "load_cxr14",
    "load_openi",
    "load_rsna_pneumonia",
]

logger = logging.getLogger(__name__)
RSNA_CLASSES = ("Normal", "Pneumonia")  # label 1 = Target 1 (lung opacity suspicious for pneumonia)
_NO_FINDING = "No Finding"


class EvalSet(NamedTuple):
    datalist: Datalist
    class_names: tuple[str, ...]


def _add(datalist: Datalist, item: dict, require_files: bool) -> None:
    if require_files and not os.path.isfile(item["image"]):
        datalist.skip("missing_image", item["image"])
    else:
        datalist.append(item)


def _finish(datalist: Datalist, name: str, root: Path) -> Datalist:
    if datalist.skipped:
        logger.warning("%s datalist from %s: %s", name, root, datalist.summary())
    return datalist


def load_chexpert_5x200(root: str | os.PathLike, require_files: bool = True) -> EvalSet:
    """GLoRIA's ``chexpert_5x200.csv``: ``Path`` relative to ``root``; the label is the one class of the five
    marked 1.0 (a row with none or several is a wrong table and raises)."""
    root = Path(root).absolute()
    path = root / CHEXPERT_5X200_CSV
    classes = list(CHEXPERT_5X200_CLASSES)
    table = read_csv(path, ("Path", *classes), numeric=classes, strings=("Path",), keep=(),
                     no_blanks=("Path",))
    positive = table[classes].to_numpy() == 1.0
    counts = positive.sum(1)
    if (counts != 1).any():
        row = int(np.flatnonzero(counts != 1)[0])
        reason = f"expected exactly one of {classes} to be 1.0, found {counts[row]} at line {row + 2}"
        raise CXRDataError(reason, path=path, field="/".join(classes))
    datalist = Datalist()
    for rel, label in zip(table["Path"], positive.argmax(1)):
        _add(datalist, {"image": str(root / rel), "label": int(label)}, require_files)
    return EvalSet(_finish(datalist, "CheXpert 5x200", root), CHEXPERT_5X200_CLASSES)


def load_rsna_pneumonia(root: str | os.PathLike, require_files: bool = True) -> EvalSet:
    """``stage_2_train_labels.csv`` (one row per box, so patients repeat) reduced to one item per patientId,
    in first-appearance order, with label ``Target`` (0 / 1) and image ``stage_2_train_images/<id>.dcm``."""
    root = Path(root).absolute()
    path = root / RSNA_LABELS_CSV
    table = read_csv(path, ("patientId", "Target"), numeric=("Target",), strings=("patientId",), keep=(),
                     no_blanks=("patientId", "Target"))
    odd = ~table["Target"].isin((0.0, 1.0)).to_numpy()
    if odd.any():
        row = int(np.flatnonzero(odd)[0])
        raise CXRDataError(f"expected 0 or 1, found {table['Target'].iloc[row]} at line {row + 2}", path=path,
                           field="Target")
    targets = table.groupby("patientId", sort=False)["Target"].max()
    datalist = Datalist()
    for patient, target in targets.items():
        _add(datalist, {"image": str(root / RSNA_IMAGE_DIR / f"{patient}.dcm"), "label": int(target)},
             require_files)
    return EvalSet(_finish(datalist, "RSNA Pneumonia", root), RSNA_CLASSES)


def load_cxr14(root: str | os.PathLike, image_list: str | None = None, require_files: bool = True) -> EvalSet:
    """NIH ChestX-ray14 ``Data_Entry_2017.csv``: multi-hot labels over the 14 classes from the '|'-separated
    ``Finding Labels`` ('No Finding' = none); ``image_list`` (e.g. the release's ``test_list.txt``, relative
    to ``root``) keeps only the images it names. Images are ``images/<Image Index>``."""
    root = Path(root).absolute()
    path = root / CXR14_CSV
    columns = ("Image Index", "Finding Labels")
    table = read_csv(path, columns, strings=columns, keep=(), no_blanks=columns)
    if image_list is not None:
        list_path = root / image_list
        if not list_path.is_file():
            raise CXRDataError("file not found; expected a list of image file names, one per line",
                               path=list_path)
        wanted = set(list_path.read_text().split())
        table = table[table["Image Index"].isin(wanted)]
    index = {name: i for i, name in enumerate(CXR14_CLASSES)}
    datalist = Datalist()
    for line, (name, findings) in zip(table.index + 2, zip(table["Image Index"], table["Finding Labels"])):
        label = np.zeros(len(CXR14_CLASSES), np.float32)
        for finding in (f.strip() for f in findings.split("|")):
            if finding not in index and finding != _NO_FINDING:
                reason = (f"expected {_NO_FINDING!r} or '|'-separated labels from {list(CXR14_CLASSES)}, "
                          f"found {finding!r} at line {line}")
                raise CXRDataError(reason, path=path, field="Finding Labels")
            if finding in index:
                label[index[finding]] = 1.0
        _add(datalist, {"image": str(root / CXR14_IMAGE_DIR / name), "label": label}, require_files)
    return EvalSet(_finish(datalist, "CXR14", root), CXR14_CLASSES)


def load_openi(root: str | os.PathLike, require_files: bool = True) -> EvalSet:
    """OpenI / IU X-ray (``indiana_reports.csv`` + ``indiana_projections.csv``): one item per *frontal* image
    with its study's report = findings + impression. Studies whose report is empty in both are skipped and
    counted; class names are empty (OpenI is a retrieval set)."""
    root = Path(root).absolute()
    reports_path, projections_path = root / OPENI_REPORTS_CSV, root / OPENI_PROJECTIONS_CSV
    text_columns = ("uid", "findings", "impression")
    reports = read_csv(reports_path, text_columns, strings=text_columns, keep=(), no_blanks=("uid",))
    projection_columns = ("uid", "filename", "projection")
    projections = read_csv(projections_path, projection_columns, strings=projection_columns, keep=(),
                           no_blanks=projection_columns)
    duplicated = reports["uid"].duplicated()
    if duplicated.any():
        raise CXRDataError(f"expected one row per uid, found {reports['uid'][duplicated].iloc[0]!r} twice",
                           path=reports_path, field="uid")
    text = {uid: " ".join(" ".join(part for part in sections if isinstance(part, str)).split())
            for uid, *sections in zip(reports["uid"], reports["findings"], reports["impression"])}
    frontal = projections[projections["projection"].str.strip().str.lower() == "frontal"]
    datalist = Datalist()
    for uid, filename in zip(frontal["uid"], frontal["filename"]):
        image = root / OPENI_IMAGE_DIR / filename
        if uid not in text:
            datalist.skip("no_report_row", image)
        elif not text[uid]:
            datalist.skip("empty_report", image)
        else:
            _add(datalist, {"image": str(image), "report": text[uid], "uid": uid}, require_files)
    return EvalSet(_finish(datalist, "OpenI", root), ())
