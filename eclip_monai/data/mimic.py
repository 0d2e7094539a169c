"""MIMIC-CXR datalist: the three MIMIC-CXR-JPG tables joined with the report text of each study.

The tables come from MIMIC-CXR-JPG (plain or ``.csv.gz`` as released) and the DICOMs and reports from
MIMIC-CXR, laid out under one ``root``. One unreadable study must not cost the whole dataset, so bad studies
are skipped and counted on the returned :class:`Datalist` rather than raised; a missing table or column is a
setup error and raises :class:`~eclip_monai.errors.CXRDataError`.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from eclip_monai.data.formats import (
    CHEXPERT_LABELS,
    FRONTAL_VIEWS,
    MIMIC_CHEXPERT_CSV,
    MIMIC_METADATA_CSV,
    MIMIC_SPLIT_CSV,
    mimic_dicom_path,
    mimic_report_path,
)
from eclip_monai.data.reports import DEFAULT_SECTIONS, extract_report_text
from eclip_monai.errors import CXRDataError

logger = logging.getLogger(__name__)

MIMIC_SPLITS = ("train", "validate", "test")
_PROGRESS_MIN_STUDIES = 1000  # below this a progress bar is noise


class Datalist(list):
    """A list of MONAI data dicts that also remembers what was left out and why.

    Attributes:
        skipped: reason -> number of items dropped for it.
        examples: reason -> the first few offending paths (or ids), so a user can look at one.
    """

    max_examples = 3

    def __init__(self, items: Iterable[dict] = ()):
        super().__init__(items)
        self.skipped: Counter = Counter()
        self.examples: dict[str, list[str]] = {}

    def skip(self, reason: str, path: str | os.PathLike) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(os.fspath(path))

    def summary(self) -> str:
        if not self.skipped:
            return f"{len(self)} items, none skipped"
        counts = ", ".join(f"{reason}={n}" for reason, n in self.skipped.most_common())
        examples = "; ".join(f"{reason}: {', '.join(paths)}" for reason, paths in self.examples.items())
        return f"{len(self)} items, skipped {sum(self.skipped.values())} ({counts}); e.g. {examples}"


def find_table(root: str | os.PathLike, name: str) -> Path:
    """``root/name``, or its gzipped form ``root/name.gz`` as in the MIMIC-CXR-JPG release."""
    for candidate in (Path(root) / name, Path(root) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise CXRDataError(f"file not found; expected {name} or {name}.gz in {root}", path=Path(root) / name)


def read_csv(
    path: str | os.PathLike,
    required: Sequence[str] = (),
    *,
    numeric: Iterable[str] = (),
    strings: Iterable[str] = (),
    keep: Iterable[str] | None = None,
    no_blanks: Iterable[str] = (),
) -> pd.DataFrame:
    """Read a CSV and check it has the ``required`` columns and that ``numeric`` columns hold numbers.

    Blank cells and ``nan`` read as NaN (the readers decide what NaN means) except in ``no_blanks``; any
    other non-number raises, naming the line (header = line 1) so the user can fix the file. ``strings``
    keeps ID columns as text (a numeric-looking DICOM id must not become a float); ``keep`` limits parsing
    to those columns (plus ``required``).
    """
    path = Path(path)
    if not path.is_file():
        raise CXRDataError(f"file not found; expected a CSV with columns {list(required)}", path=path)
    kept = None if keep is None else set(keep) | set(required)
    try:
        usecols = None if kept is None else kept.__contains__
        frame = pd.read_csv(path, dtype={c: str for c in strings}, usecols=usecols)
    except pd.errors.EmptyDataError:
        raise CXRDataError(f"file is empty; expected a header with columns {list(required)}",
                           path=path) from None
    except (ValueError, OSError) as exc:  # not UTF-8 (UnicodeDecodeError), unbalanced quotes (ParserError)...
        raise CXRDataError(f"expected a UTF-8 CSV with columns {list(required)}, found "
                           f"{type(exc).__name__}: {exc}", path=path) from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise CXRDataError(f"missing column {missing[0]!r}; expected columns {list(required)}, "
                           f"found {list(frame.columns)}", path=path, field=missing[0])
    for column in numeric:
        if column in frame.columns:
            frame[column] = _to_numeric(frame[column], path, column)
    for column in no_blanks:
        blank = frame[column].isna().to_numpy()
        if blank.any():
            line = int(np.flatnonzero(blank)[0]) + 2
            raise CXRDataError(f"expected a value, found a blank at line {line}", path=path, field=column)
    return frame


def _to_numeric(values: pd.Series, path: Path, column: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return values.astype(float)
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values.notna() & numbers.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise CXRDataError(f"expected a number, found {values.iloc[row]!r} at line {row + 2}",
                           path=path, field=column)
    return numbers.astype(float)


def read_mimic_image_sizes(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """``dicom_id -> (rows, cols)`` from the MIMIC-CXR-JPG metadata table (the DICOM's Rows/Columns)."""
    path = find_table(root, MIMIC_METADATA_CSV)
    size = ("Rows", "Columns")
    table = read_csv(path, ("dicom_id", *size), numeric=size, strings=("dicom_id",), keep=())
    table = table.dropna(subset=list(size))
    return {d: (int(r), int(c)) for d, r, c in zip(table["dicom_id"], table["Rows"], table["Columns"])}


def build_mimic_datalist(
    root: str | os.PathLike,
    splits: Sequence[str] = ("train",),
    views: Sequence[str] | None = FRONTAL_VIEWS,
    sections: Sequence[str] = DEFAULT_SECTIONS,
    fallback_to_full: bool = False,
    require_files: bool = True,
) -> Datalist:
    """One item per DICOM of the requested ``splits`` and ``views`` (``None``: every view), with its report.

    Items are ``{"image", "report", "dicom_id", "subject_id", "study_id", "split", "view", "labels"}``;
    ``image`` is an absolute path, ``labels`` a float32 array over ``CHEXPERT_LABELS`` (1 / 0 / -1, NaN where
    blank or where the study has no CheXpert row). Images whose report is missing or has no text in
    ``sections``, or whose DICOM is missing when ``require_files``, are skipped and counted per image.
    """
    unknown = sorted(set(splits) - set(MIMIC_SPLITS))
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; MIMIC-CXR splits are {list(MIMIC_SPLITS)}")
    root = Path(root).absolute()
    images = _read_images(root)
    if views is not None:
        images = images[images["ViewPosition"].isin(views)]
    datalist = Datalist()
    for dicom_id in images.loc[images["split"].isna(), "dicom_id"]:
        datalist.skip("not_in_split_table", dicom_id)
    images = images[images["split"].isin(splits)]
    labels = images[list(CHEXPERT_LABELS)].to_numpy(np.float32)

    reports: dict[tuple[int, int], tuple[str | None, str | None]] = {}  # study -> (text, skip reason)
    studies = images[["subject_id", "study_id"]].drop_duplicates()
    for subject_id, study_id in tqdm(
        studies.itertuples(index=False), total=len(studies), desc="reading reports",
        disable=len(studies) < _PROGRESS_MIN_STUDIES,
    ):
        reports[subject_id, study_id] = _read_report(root, subject_id, study_id, sections, fallback_to_full)

    for row, label in zip(images.itertuples(index=False), labels):
        report, problem = reports[row.subject_id, row.study_id]
        image = root / mimic_dicom_path(row.subject_id, row.study_id, row.dicom_id)
        if problem:
            datalist.skip(problem, root / mimic_report_path(row.subject_id, row.study_id))
        elif require_files and not image.is_file():
            datalist.skip("missing_dicom", image)
        else:
            datalist.append({
                "image": str(image), "report": report, "dicom_id": row.dicom_id,
                "subject_id": int(row.subject_id), "study_id": int(row.study_id), "split": row.split,
                "view": row.ViewPosition, "labels": label.copy(),
            })
    if datalist.skipped:
        logger.warning("MIMIC-CXR datalist from %s: %s", root, datalist.summary())
    return datalist


def _read_images(root: Path) -> pd.DataFrame:
    """Metadata left-joined with the split (by dicom_id) and CheXpert labels (by study)."""
    ids = ("subject_id", "study_id")
    meta_path = find_table(root, MIMIC_METADATA_CSV)
    split_path = find_table(root, MIMIC_SPLIT_CSV)
    chexpert_path = find_table(root, MIMIC_CHEXPERT_CSV)
    meta = read_csv(meta_path, ("dicom_id", *ids, "ViewPosition"), numeric=ids, strings=("dicom_id",),
                    keep=(), no_blanks=("dicom_id", *ids))
    split = read_csv(split_path, ("dicom_id", "split"), strings=("dicom_id",), keep=(),
                     no_blanks=("dicom_id",))
    chexpert = read_csv(chexpert_path, (*ids, *CHEXPERT_LABELS), numeric=(*ids, *CHEXPERT_LABELS), keep=(),
                        no_blanks=ids)
    for table, path, key in ((split, split_path, ["dicom_id"]), (chexpert, chexpert_path, list(ids))):
        duplicated = table.duplicated(key)
        if duplicated.any():
            first = table.loc[duplicated, key].iloc[0].tolist()
            raise CXRDataError(f"expected one row per {'/'.join(key)}, found {first} twice",
                               path=path, field=key[-1])
    values = chexpert[list(CHEXPERT_LABELS)].to_numpy()
    odd = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    if odd.any():
        row, col = np.argwhere(odd)[0]
        raise CXRDataError(f"expected 1.0, 0.0, -1.0 or blank, found {values[row, col]} at line {row + 2}",
                           path=chexpert_path, field=CHEXPERT_LABELS[col])
    for table in (meta, chexpert):
        table[list(ids)] = table[list(ids)].astype(np.int64)
    meta["ViewPosition"] = meta["ViewPosition"].fillna("")  # blank in the release for some images
    merged = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    return merged.merge(chexpert, on=list(ids), how="left")


def _read_report(root: Path, subject_id: int, study_id: int, sections, fallback_to_full: bool):
    """``(text for the text tower, None)``, or ``(None, skip reason)`` when there is no usable text."""
    path = root / mimic_report_path(subject_id, study_id)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, "missing_report"
    try:
        return extract_report_text(text, sections, path=path, fallback_to_full=fallback_to_full), None
    except CXRDataError:
        return None, "empty_report"
