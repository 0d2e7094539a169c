"""REFLACX readings: fixations, abnormality ellipses and dictations recorded on MIMIC-CXR images.

Fixation positions are already pixels of the original DICOM (x = column, y = row). Radiologists could zoom and
pan, so every fixation row also says which part of the image was on screen (``*_shown_from_image``) and how
many image pixels one degree of visual angle covered at that zoom; a fixation outside the shown part looked
at the screen, not the image, and is dropped.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eclip_monai.data.formats import (
    REFLACX_ELLIPSES_CSV,
    REFLACX_FIXATIONS_CSV,
    REFLACX_METADATA_CSV,
    REFLACX_TRANSCRIPTION,
)
from eclip_monai.data.gaze import GazeRecord, GazeStats
from eclip_monai.data.mimic import read_csv
from eclip_monai.errors import CXRDataError

logger = logging.getLogger(__name__)

_METADATA_COLUMNS = ("id", "dicom_id", "eye_tracking_data_discarded", "image_size_x", "image_size_y")
_POSITION = ("x_position", "y_position", "timestamp_start_fixation", "timestamp_end_fixation")
_PPD = ("angular_resolution_x_pixels_per_degree", "angular_resolution_y_pixels_per_degree")
_SHOWN = ("xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image", "ymax_shown_from_image")
_ELLIPSE_GEOMETRY = ("xmin", "ymin", "xmax", "ymax", "certainty")


def read_reflacx_fixations(
    root: str | os.PathLike, phases: Sequence[int] = (1, 2, 3), include_discarded: bool = False
) -> tuple[dict[str, list[GazeRecord]], GazeStats]:
    """``dicom_id -> [GazeRecord per reading]`` (metadata order) over the phases whose metadata exists.

    Per reading: duration = end - start; ``pixels_per_degree`` is the median over fixations of the mean of the
    x and y angular resolutions; ``shown_region`` the union of the shown parts, within the image. Fixations
    with a missing value, a non-positive duration, or a position off the image or off the shown part are
    dropped and counted. Readings flagged ``eye_tracking_data_discarded`` (unless ``include_discarded``),
    with an empty fixations file, or with no valid fixation are skipped and counted.

    Raises:
        CXRDataError: no metadata for any phase, a missing fixations file or column, or a non-number.
    """
    root = Path(root)
    stats = GazeStats()
    records: dict[str, list[GazeRecord]] = {}
    for reading in _read_metadata(root, phases).itertuples(index=False):
        if reading.eye_tracking_data_discarded and not include_discarded:
            stats.skip("eye_tracking_data_discarded", reading.id)
            continue
        record = _read_reading(root, reading, stats)
        if record is not None:
            records.setdefault(reading.dicom_id, []).append(record)
    (logger.warning if stats.skipped else logger.info)("REFLACX gaze from %s: %s", root, stats.summary())
    return records, stats


def read_reflacx_ellipses(root: str | os.PathLike, reading_id: str) -> pd.DataFrame:
    """One row per ellipse of a reading: its bounding box in image pixels (``xmin`` .. ``ymax``, x = column),
    ``certainty``, and ``labels``, the tuple of label columns marked true (label sets differ between phases,
    so every non-geometry column counts as a label)."""
    path = Path(root) / REFLACX_ELLIPSES_CSV.format(id=reading_id)
    table = read_csv(path, _ELLIPSE_GEOMETRY, numeric=_ELLIPSE_GEOMETRY)
    label_columns = [c for c in table.columns if c not in _ELLIPSE_GEOMETRY]
    flags = {c: _as_bool(table[c], path, c) for c in label_columns}
    labels = [tuple(c for c in label_columns if flags[c][i]) for i in range(len(table))]
    return table[list(_ELLIPSE_GEOMETRY)].assign(labels=labels)


def read_reflacx_transcription(root: str | os.PathLike, reading_id: str) -> str:
    """The radiologist's dictation for a reading, whitespace-trimmed."""
    path = Path(root) / REFLACX_TRANSCRIPTION.format(id=reading_id)
    if not path.is_file():
        raise CXRDataError(f"file not found; expected the dictation of reading {reading_id}", path=path)
    return path.read_text(encoding="utf-8", errors="replace").strip()


def _read_metadata(root: Path, phases: Sequence[int]) -> pd.DataFrame:
    frames = []
    for phase in phases:
        path = root / REFLACX_METADATA_CSV.format(phase=phase)
        if not path.is_file():
            continue
        frame = read_csv(path, _METADATA_COLUMNS, numeric=("image_size_x", "image_size_y"),
                         strings=("id", "dicom_id"), keep=(), no_blanks=_METADATA_COLUMNS)
        frame["eye_tracking_data_discarded"] = _as_bool(frame["eye_tracking_data_discarded"], path,
                                                        "eye_tracking_data_discarded")
        frames.append(frame)
    if not frames:
        expected = [REFLACX_METADATA_CSV.format(phase=p) for p in phases]
        raise CXRDataError(f"file not found; expected at least one of {expected} in {root}",
                           path=root / expected[0])
    return pd.concat(frames, ignore_index=True)


def _read_reading(root: Path, reading, stats: GazeStats) -> GazeRecord | None:
    path = root / REFLACX_FIXATIONS_CSV.format(id=reading.id)
    if not path.is_file():
        raise CXRDataError(f"file not found; expected the fixations of reading {reading.id} (image "
                           f"{reading.dicom_id}) listed in the REFLACX metadata", path=path)
    columns = (*_POSITION, *_PPD, *_SHOWN)
    table = None if path.stat().st_size == 0 else read_csv(path, columns, numeric=columns, keep=())
    if table is None or table.empty:
        stats.skip("empty_fixations_file", path)
        return None
    x, y, start, end, ppd_x, ppd_y, xmin, ymin, xmax, ymax = (table[c].to_numpy(float) for c in columns)
    duration = end - start
    rows, cols = int(reading.image_size_y), int(reading.image_size_x)
    shown_known = np.isfinite(xmin) & np.isfinite(ymin) & np.isfinite(xmax) & np.isfinite(ymax)
    keep = stats.filter({
        "nan": ~(np.isfinite(x) & np.isfinite(y) & np.isfinite(duration)),
        "non_positive_duration": ~(duration > 0),
        "off_image": (x < 0) | (x >= cols) | (y < 0) | (y >= rows),
        "off_shown_region": shown_known & ((x < xmin) | (x >= xmax) | (y < ymin) | (y >= ymax)),
    })
    if not keep.any():
        stats.skip("no_valid_fixation", path)
        return None
    ppd = ((ppd_x + ppd_y) / 2)[keep]
    ppd = ppd[np.isfinite(ppd)]
    shown = keep & shown_known
    region = None
    if shown.any():
        region = (max(0.0, float(xmin[shown].min())), max(0.0, float(ymin[shown].min())),
                  min(float(cols), float(xmax[shown].max())), min(float(rows), float(ymax[shown].max())))
    return GazeRecord(
        reading.dicom_id, np.stack([x, y, duration], axis=1)[keep], (rows, cols),
        pixels_per_degree=float(np.median(ppd)) if ppd.size else None, shown_region=region, source="reflacx",
        reading_id=reading.id,
    )


def _as_bool(values: pd.Series, path: Path, column: str) -> np.ndarray:
    """REFLACX writes flags as ``True``/``False``; accept 1/0 too, and name the line of anything else."""
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(bool)
    text = values.astype(str).str.strip().str.lower()
    truth = text.map({"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False})
    unknown = truth.isna().to_numpy()
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise CXRDataError(f"expected True or False, found {values.iloc[row]!r} at line {row + 2}", path=path,
                           field=column)
    return truth.to_numpy(bool)
