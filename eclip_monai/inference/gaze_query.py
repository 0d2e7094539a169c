"""A reader's gaze at reading time, as a search query: fixations or a region of interest from a request.

The result feeds the evaluation chain with a heatmap (``eval_transforms(with_heatmap=True)``), whose
``FixationsToHeatmapd`` validates the fixations against the image (finite, on the image, durations >= 0) and
names the file at fault; here only the request's shape is checked, before any image is read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import pydicom

from eclip_monai.data.egd_cxr import DEFAULT_SCREEN_PIXELS_PER_DEGREE
from eclip_monai.data.formats import EGD_SCREEN_SIZE
from eclip_monai.errors import CXRDataError
from eclip_monai.transforms.io import LoadCXRImage, is_dicom

ROI_GRID = 8  # an ROI is read as ROI_GRID x ROI_GRID equal fixations spread over the box

__all__ = ["ROI_GRID", "gaze_request", "image_rows", "reading_pixels_per_degree", "roi_fixations"]


def roi_fixations(roi) -> np.ndarray:
    """(ROI_GRID², 3) equal fixations ``[x, y, 1.0]`` on a grid filling ``[xmin, ymin, xmax, ymax]``."""
    try:
        box = np.asarray(roi, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):  # text, nested lists of different lengths...
        box = np.empty(0)
    if box.shape != (4,) or not np.isfinite(box).all() or box[0] >= box[2] or box[1] >= box[3]:
        raise CXRDataError(f"expected [xmin, ymin, xmax, ymax] with xmin < xmax and ymin < ymax, found {roi!r}",
                           field="roi")
    xs = np.linspace(box[0], box[2], ROI_GRID)
    ys = np.linspace(box[1], box[3], ROI_GRID)
    x, y = np.meshgrid(xs, ys)
    return np.stack([x.ravel(), y.ravel(), np.ones(x.size)], axis=1)


def reading_pixels_per_degree(rows: int, screen_pixels_per_degree: float = DEFAULT_SCREEN_PIXELS_PER_DEGREE
                              ) -> float:
    """Image pixels per degree of visual angle for an image shown at the full height of a reading screen
    (EGD-CXR's geometry: about 41 screen pixels per degree on 1080 rows)."""
    return screen_pixels_per_degree * rows / EGD_SCREEN_SIZE[1]


def image_rows(path: str | os.PathLike) -> int:
    """The image's row count: from the DICOM header when it is one (and not deflated: pydicom would inflate
    the whole dataset to read it), else by reading the image, whose loader names the file at fault."""
    if is_dicom(path):
        try:
            syntax = pydicom.filereader.read_file_meta_info(path).get("TransferSyntaxUID")
            if syntax != pydicom.uid.DeflatedExplicitVRLittleEndian:
                rows = int(pydicom.dcmread(path, stop_before_pixels=True).get("Rows") or 0)
                if rows > 0:
                    return rows
        except Exception:  # a broken header: LoadCXRImage below raises CXRDataError naming file and field
            pass
    return int(LoadCXRImage()(path).shape[-2])


def gaze_request(request: Mapping, image_path: str | os.PathLike | None = None) -> dict | None:
    """``{"fixations": (N, 3), "pixels_per_degree": float}`` from a request's ``fixations``
    (``[[x, y, duration_s], ...]`` in the image's pixel frame) or ``roi``, or ``None`` when it has neither.

    ``pixels_per_degree`` (the heatmap's 1° sigma) is the request's, else :func:`reading_pixels_per_degree` of
    the image at ``image_path``.
    """
    fixations, roi = request.get("fixations"), request.get("roi")
    if fixations is None and roi is None:
        return None
    if fixations is not None and roi is not None:
        raise CXRDataError("expected either fixations or an roi, found both", field="fixations")
    if roi is not None:
        points = roi_fixations(roi)
    else:
        try:
            points = np.asarray(fixations, dtype=np.float64)
        except (TypeError, ValueError):
            points = np.empty((0,))
        if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
            raise CXRDataError(f"expected a non-empty list of [x, y, duration_s], found {str(fixations)[:80]!r}",
                               field="fixations")
    ppd = request.get("pixels_per_degree")
    if ppd is None:
        if image_path is None:
            raise CXRDataError("expected pixels_per_degree or an image to derive it from, found neither",
                               field="pixels_per_degree")
        ppd = reading_pixels_per_degree(image_rows(image_path))
    try:
        ppd = float(ppd)
    except (TypeError, ValueError):
        ppd = math.nan
    if not (math.isfinite(ppd) and ppd > 0):
        raise CXRDataError(f"expected a positive number, found {request.get('pixels_per_degree')!r}",
                           field="pixels_per_degree")
    return {"fixations": points, "pixels_per_degree": ppd}
