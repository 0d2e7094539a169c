"""Eye-gaze records shared by the EGD-CXR and REFLACX readers, and joining them onto a datalist.

AXIS CONVENTION — read this before touching gaze coordinates:
    ``fixations[:, 0]`` is **x = column** and ``fixations[:, 1]`` is **y = row**, in pixels of the original
    DICOM (continuous positions, ``0 <= x < cols``, ``0 <= y < rows``); ``image_size`` is ``(rows, cols)``.
    Images are the other way round: MONAI's ``PydicomReader`` returns ``(cols, rows)`` arrays, our DICOM
    loader returns ``(C, rows, cols)``. Fixations stay in x/y everywhere; only the heatmap transform turns
    them into array indices, against the image's own axis order.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

FIXATION_COLUMNS = ("x", "y", "duration_s")


@dataclass(frozen=True, eq=False)
class GazeRecord:
    """The valid fixations of one reading of one image.

    Attributes:
        dicom_id: the MIMIC-CXR image the gaze was recorded on.
        fixations: read-only float32 ``(N, 3)`` array of ``[x (column), y (row), duration in seconds]``.
        image_size: ``(rows, cols)`` of the original DICOM the coordinates refer to.
        pixels_per_degree: image pixels per degree of visual angle (sets the heatmap's 1° sigma); ``None``
            when the dataset does not record it (EGD-CXR).
        shown_region: ``(xmin, ymin, xmax, ymax)`` of the image that was on screen, ``None`` if all of it.
        source: ``"egd-cxr"`` or ``"reflacx"``.
        reading_id: the dataset's id of this reading (REFLACX), ``None`` where each image has one reading.
    """

    dicom_id: str
    fixations: np.ndarray
    image_size: tuple[int, int]
    pixels_per_degree: float | None = None
    shown_region: tuple[float, float, float, float] | None = None
    source: str = ""
    reading_id: str | None = None

    def __post_init__(self):
        fixations = np.array(self.fixations, dtype=np.float32).reshape(-1, len(FIXATION_COLUMNS))
        fixations.flags.writeable = False
        object.__setattr__(self, "fixations", fixations)


@dataclass
class GazeStats:
    """What a gaze reader dropped, so a user can tell a noisy recording from a broken conversion.

    Attributes:
        kept: fixations kept.
        dropped: reason -> fixations dropped (``invalid``, ``nan``, ``non_positive_duration``, ``off_image``,
            ``off_shown_region``).
        skipped: reason -> images or readings left out entirely (e.g. ``no_valid_fixation``).
        examples: reason -> the first few skipped images/files.
    """

    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_examples = 3

    def skip(self, reason: str, what: str | os.PathLike) -> None:
        self.skipped[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(os.fspath(what))

    def drop(self, reason: str, count: int) -> None:
        if count:  # no zero entries, so ``dropped`` lists only what happened
            self.dropped[reason] += count

    def filter(self, checks: Mapping[str, np.ndarray]) -> np.ndarray:
        """Mask of fixations passing every ``reason -> bad mask`` check; a drop counts under its first."""
        masks = [np.asarray(bad, bool) for bad in checks.values()]
        keep = np.ones(len(masks[0]), bool)
        for reason, bad in zip(checks, masks):
            self.drop(reason, int((keep & bad).sum()))
            keep &= ~bad
        self.kept += int(keep.sum())
        return keep

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={n}" for k, n in self.dropped.most_common()) or "none"
        skipped = ", ".join(f"{k}={n}" for k, n in self.skipped.most_common()) or "none"
        return f"kept {self.kept} fixations; dropped {dropped}; skipped {skipped}"


def attach_gaze(
    datalist: Sequence[dict],
    records: Mapping[str, GazeRecord | Sequence[GazeRecord]],
    how: str = "concat",
) -> list[dict]:
    """The items of ``datalist`` whose ``dicom_id`` has gaze, with ``fixations``, ``pixels_per_degree`` and
    ``gaze_source`` added (copies; the input is untouched) — the expert datalist.

    Several readings of one image are combined by ``how``: ``"concat"`` stacks all fixations (the heatmap
    sums the readers' attention), ``"mean"`` stacks them with each reading's durations divided by the number
    of readings (the duration-weighted heatmap is then the mean of the per-reading heatmaps), ``"first"``
    keeps the first reading. ``pixels_per_degree`` is the median over the readings that record it, else
    ``None``.
    """
    if how not in ("concat", "mean", "first"):
        raise ValueError(f"how must be 'concat', 'mean' or 'first', got {how!r}")
    expert = []
    for item in datalist:
        readings = records.get(item["dicom_id"], ())
        readings = [readings] if isinstance(readings, GazeRecord) else list(readings)
        if how == "first":
            readings = readings[:1]
        if not readings:
            continue
        fixations = np.concatenate([r.fixations for r in readings])
        if how == "mean":
            fixations[:, 2] /= len(readings)
        ppds = [r.pixels_per_degree for r in readings if r.pixels_per_degree is not None]
        sources = "+".join(dict.fromkeys(r.source for r in readings))
        ppd = float(np.median(ppds)) if ppds else None
        expert.append({**item, "fixations": fixations, "pixels_per_degree": ppd, "gaze_source": sources})
    return expert
