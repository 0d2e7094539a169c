"""Readers and datalists: files in the public datasets' formats → MONAI data dicts and gaze records."""

from eclip_monai.data.egd_cxr import read_egd_fixations
from eclip_monai.data.expert import build_expert_datalist
from eclip_monai.data.gaze import FIXATION_COLUMNS, GazeRecord, GazeStats, attach_gaze
from eclip_monai.data.mimic import (
    Datalist,
    build_mimic_datalist,
    find_table,
    read_csv,
    read_mimic_image_sizes,
)
from eclip_monai.data.reflacx import read_reflacx_ellipses, read_reflacx_fixations, read_reflacx_transcription

__all__ = [
    "FIXATION_COLUMNS",
    "Datalist",
    "GazeRecord",
    "GazeStats",
    "attach_gaze",
    "build_expert_datalist",
    "build_mimic_datalist",
    "find_table",
    "read_csv",
    "read_egd_fixations",
    "read_mimic_image_sizes",
    "read_reflacx_ellipses",
    "read_reflacx_fixations",
    "read_reflacx_transcription",
]
