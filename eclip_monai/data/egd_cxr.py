"""EGD-CXR gaze: Gazepoint screen fractions mapped back to pixels of the original MIMIC-CXR DICOM.

The image was padded to the screen's aspect ratio with ``image_*_pad`` pixels (of the original image) and
scaled to the screen, so ``x = FPOGX * (cols + left + right) - left`` and ``y = FPOGY * (rows + top + bottom)
- top``. Rows/cols come, in order of preference, from the MIMIC-CXR-JPG metadata table, from solving that
equation with the recorded ``X_ORIGINAL/Y_ORIGINAL``, or from the DICOM header. Whenever the size came from
elsewhere, ``X_ORIGINAL/Y_ORIGINAL`` cross-check it: a wrong size or a swapped axis fails loudly here rather
than producing heatmaps on the wrong anatomy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from eclip_monai.data.formats import EGD_FIXATIONS_CSV, EGD_MASTER_SHEET_CSV, EGD_SCREEN_SIZE, MIMIC_METADATA_CSV
from eclip_monai.data.gaze import GazeRecord, GazeStats
from eclip_monai.data.mimic import read_csv, read_mimic_image_sizes
from eclip_monai.errors import CXRDataError

logger = logging.getLogger(__name__)

PAD_COLUMNS = ("image_top_pad", "image_bottom_pad", "image_left_pad", "image_right_pad")
_GAZE = ("FPOGX", "FPOGY", "FPOGD", "FPOGV")  # screen fractions, duration (s), validity flag
_ORIGINAL = ("X_ORIGINAL", "Y_ORIGINAL")  # optional: the release's own mapping, used as a cross-check
# EGD-CXR records no viewing geometry. 1° of visual angle at ~65 cm from a 24" 1920x1080 monitor is ~41 screen
# pixels; the image was scaled so that (rows + top + bottom) image pixels span the screen's 1080 rows.
DEFAULT_SCREEN_PIXELS_PER_DEGREE = 41.0
MISMATCH_TOLERANCE_PX = 5.0  # X_ORIGINAL is the same mapping, so honest data agrees to rounding
_MIN_SCREEN_FRACTION = 0.05  # solving width = (X_ORIGINAL + pad) / FPOGX is unstable near the screen edge


def read_egd_fixations(
    root: str | os.PathLike,
    mimic_root: str | os.PathLike | None = None,
    screen_pixels_per_degree: float | None = DEFAULT_SCREEN_PIXELS_PER_DEGREE,
) -> tuple[dict[str, GazeRecord], GazeStats]:
    """``dicom_id -> GazeRecord`` from EGD-CXR's ``fixations.csv`` and ``master_sheet.csv`` in ``root``.

    ``mimic_root`` (the MIMIC-CXR root with the MIMIC-CXR-JPG metadata table) gives each image's Rows/Columns;
    without it they are solved from ``X_ORIGINAL/Y_ORIGINAL`` or read from the DICOM header at the master
    sheet's ``path`` (relative to ``mimic_root`` or ``root``).

    ``screen_pixels_per_degree`` (visual angle on the recording screen) becomes each record's
    ``pixels_per_degree`` in original-image pixels, so heatmap σ can be given in degrees as for REFLACX;
    ``None`` leaves it unset (σ must then be given in pixels).

    Fixations with ``FPOGV != 1``, a missing value, a non-positive ``FPOGD`` (the duration) or a position off
    the image are dropped and counted; images left with none, or whose size cannot be found, are skipped and
    counted on the returned :class:`GazeStats`.

    Raises:
        CXRDataError: a missing file or column, a non-number in a numeric column, or a screen-to-image
            mapping that disagrees with ``X_ORIGINAL/Y_ORIGINAL``.
    """
    root = Path(root)
    fixations_path = root / EGD_FIXATIONS_CSV
    sheet = _read_master_sheet(root / EGD_MASTER_SHEET_CSV)
    table = read_csv(fixations_path, ("DICOM_ID", *_GAZE), numeric=(*_GAZE, *_ORIGINAL),
                     strings=("DICOM_ID",), keep=_ORIGINAL)
    has_original = set(_ORIGINAL) <= set(table.columns)
    sizes = read_mimic_image_sizes(mimic_root) if mimic_root is not None else {}
    dicom_roots = [Path(r) for r in (mimic_root, root) if r is not None]

    stats = GazeStats()
    stats.drop("no_dicom_id", int(table["DICOM_ID"].isna().sum()))
    records: dict[str, GazeRecord] = {}
    for dicom_id, group in table.groupby("DICOM_ID", sort=False):
        if dicom_id not in sheet:
            stats.skip("not_in_master_sheet", dicom_id)
            continue
        top, bottom, left, right, dicom_path = sheet[dicom_id]
        fx, fy, duration, flag = (group[c].to_numpy(float) for c in _GAZE)
        original = tuple(group[c].to_numpy(float) for c in _ORIGINAL) if has_original else None
        valid = flag == 1
        if dicom_id in sizes:
            size, size_source = sizes[dicom_id], MIMIC_METADATA_CSV
        else:
            size, size_source = None, "X_ORIGINAL"
            if original is not None:
                pads = (top, bottom, left, right)
                size = _solve_size(fx[valid], fy[valid], *(o[valid] for o in original), pads)
            if size is None:
                size, size_source = _dicom_size(dicom_path, dicom_roots), "DICOM header"
        if size is None:
            stats.skip("unknown_image_size", dicom_path or dicom_id)
            continue
        rows, cols = size
        x = fx * (cols + left + right) - left
        y = fy * (rows + top + bottom) - top
        if original is not None and size_source != "X_ORIGINAL":
            _check_against_original(x[valid], y[valid], *(o[valid] for o in original), dicom_id, size,
                                    size_source, fixations_path)
        keep = stats.filter({
            "invalid": ~valid,
            "nan": ~(np.isfinite(x) & np.isfinite(y) & np.isfinite(duration)),
            "non_positive_duration": ~(duration > 0),
            "off_image": (x < 0) | (x >= cols) | (y < 0) | (y >= rows),
        })
        if not keep.any():
            stats.skip("no_valid_fixation", dicom_id)
            continue
        fixations = np.stack([x, y, duration], axis=1)[keep]
        ppd = None
        if screen_pixels_per_degree is not None:
            ppd = screen_pixels_per_degree * (rows + top + bottom) / EGD_SCREEN_SIZE[1]
        records[dicom_id] = GazeRecord(dicom_id, fixations, (rows, cols), ppd, source="egd-cxr")
    (logger.warning if stats.skipped else logger.info)("EGD-CXR gaze from %s: %s", root, stats.summary())
    return records, stats


def _read_master_sheet(path: Path) -> dict[str, tuple[float, float, float, float, str | None]]:
    """``dicom_id -> (top, bottom, left, right pads, DICOM path or None)``; a blank pad is an error."""
    sheet = read_csv(path, ("dicom_id", *PAD_COLUMNS), numeric=PAD_COLUMNS, strings=("dicom_id", "path"),
                     keep=("path",), no_blanks=("dicom_id", *PAD_COLUMNS))
    paths = sheet["path"] if "path" in sheet.columns else pd.Series([None] * len(sheet))
    return {
        dicom_id: (*pads, path if isinstance(path, str) else None)
        for dicom_id, pads, path in zip(sheet["dicom_id"], sheet[list(PAD_COLUMNS)].to_numpy(float), paths)
    }


def _solve_size(fx, fy, x_original, y_original, pads) -> tuple[int, int] | None:
    """(rows, cols) from ``original + pad = fraction * (size + both pads)``, the median over points."""
    top, bottom, left, right = pads
    ok_x = np.isfinite(fx) & np.isfinite(x_original) & (fx > _MIN_SCREEN_FRACTION)
    ok_y = np.isfinite(fy) & np.isfinite(y_original) & (fy > _MIN_SCREEN_FRACTION)
    if not (ok_x.any() and ok_y.any()):
        return None
    cols = round(float(np.median((x_original[ok_x] + left) / fx[ok_x])) - left - right)
    rows = round(float(np.median((y_original[ok_y] + top) / fy[ok_y])) - top - bottom)
    return (rows, cols) if rows > 0 and cols > 0 else None


def _dicom_size(path: str | None, roots: list[Path]) -> tuple[int, int] | None:
    """(Rows, Columns) from the DICOM header only; the pixel data is never read. ``None`` (the image is then
    skipped and counted) for anything that is not a readable header, and for a deflated file, whose header
    pydicom can only read by inflating the whole dataset first."""
    if not path:
        return None
    import pydicom

    for candidate in [Path(path)] if Path(path).is_absolute() else [r / path for r in roots]:
        if candidate.is_file():
            try:
                syntax = pydicom.filereader.read_file_meta_info(candidate).get("TransferSyntaxUID")
                if syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
                    return None
                header = pydicom.dcmread(candidate, stop_before_pixels=True,
                                         specific_tags=["Rows", "Columns"])
                rows, cols = int(header.Rows), int(header.Columns)
            except Exception:  # not DICOM, a truncated or corrupt header, no or non-integer Rows/Columns
                return None
            return (rows, cols) if rows > 0 and cols > 0 else None
    return None


def _check_against_original(x, y, x_original, y_original, dicom_id, size, size_source, path) -> None:
    both = np.isfinite(x) & np.isfinite(y) & np.isfinite(x_original) & np.isfinite(y_original)
    if not both.any():
        return
    error = np.maximum(np.abs(x - x_original), np.abs(y - y_original))[both]
    off = error > MISMATCH_TOLERANCE_PX
    if off.mean() > 0.5:
        raise CXRDataError(
            f"gaze of {dicom_id} mapped with (rows, cols) = {size} from {size_source} lands a median "
            f"{np.median(error):.1f} px from X_ORIGINAL/Y_ORIGINAL on {off.sum()} of {both.sum()} valid "
            f"fixations; expected agreement within {MISMATCH_TOLERANCE_PX:g} px, so that image size or the "
            f"master sheet's pads do not belong to this image (or x/y are swapped)",
            path=path, field="X_ORIGINAL",
        )
