"""The expert datalist: training images that have radiologist gaze from EGD-CXR and/or REFLACX."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from eclip_monai.data.egd_cxr import DEFAULT_SCREEN_PIXELS_PER_DEGREE, read_egd_fixations
from eclip_monai.data.gaze import GazeRecord, attach_gaze
from eclip_monai.data.reflacx import read_reflacx_fixations

logger = logging.getLogger(__name__)


def build_expert_datalist(
    datalist: Sequence[dict],
    egd_root: str | os.PathLike | None = None,
    reflacx_root: str | os.PathLike | None = None,
    mimic_root: str | os.PathLike | None = None,
    how: str = "concat",
    reflacx_phases: Sequence[int] = (1, 2, 3),
    egd_screen_pixels_per_degree: float | None = DEFAULT_SCREEN_PIXELS_PER_DEGREE,
) -> list[dict]:
    """Items of ``datalist`` (from ``build_mimic_datalist``) with gaze attached, from every source given.

    Readings of the same image from both datasets are combined by ``how`` (see ``attach_gaze``). A source left
    ``None`` is not read; one that is given must exist (the readers raise ``CXRDataError`` naming the file).
    """
    readings: dict[str, list[GazeRecord]] = {}
    if egd_root is not None:
        egd, _ = read_egd_fixations(egd_root, mimic_root, screen_pixels_per_degree=egd_screen_pixels_per_degree)
        for dicom_id, record in egd.items():
            readings.setdefault(dicom_id, []).append(record)
    if reflacx_root is not None:
        reflacx, _ = read_reflacx_fixations(reflacx_root, phases=reflacx_phases)
        for dicom_id, records in reflacx.items():
            readings.setdefault(dicom_id, []).extend(records)
    expert = attach_gaze(datalist, readings, how=how)
    logger.info("Expert datalist: %d of %d images have gaze.", len(expert), len(datalist))
    return expert
