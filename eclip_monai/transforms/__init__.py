"""MONAI transforms for chest X-rays, gaze and reports: an array transform plus a dictionary ``...d`` version.

Axis convention everywhere: images are channel-first (C, H, W) = (C, rows, cols); fixations are (N, 3)
``[x, y, duration_s]`` with x = column and y = row in original pixels; heatmaps are (1, H, W) in the image's
frame, so a MONAI spatial dictionary transform applied to both keys keeps them aligned.
"""

from eclip_monai.transforms.augment import (
    CLAHE,
    RandCLAHEd,
    RandResizedCrop,
    RandResizedCropd,
    ResizeShortestSide,
    ResizeShortestSided,
)
from eclip_monai.transforms.dicom import LoadCXRDicom, LoadCXRDicomd
from eclip_monai.transforms.heatmap import FixationsToHeatmap, FixationsToHeatmapd
from eclip_monai.transforms.overlay import HeatmapOverlay, HeatmapOverlayd
from eclip_monai.transforms.pipelines import CXRKeys, deterministic_prefix, eval_transforms, train_transforms
from eclip_monai.transforms.text import ExtractReportSectiond, TokenizeText, TokenizeTextd

__all__ = [
    "CLAHE",
    "CXRKeys",
    "ExtractReportSectiond",
    "FixationsToHeatmap",
    "FixationsToHeatmapd",
    "HeatmapOverlay",
    "HeatmapOverlayd",
    "LoadCXRDicom",
    "LoadCXRDicomd",
    "RandCLAHEd",
    "RandResizedCrop",
    "RandResizedCropd",
    "ResizeShortestSide",
    "ResizeShortestSided",
    "TokenizeText",
    "TokenizeTextd",
    "deterministic_prefix",
    "eval_transforms",
    "train_transforms",
]
