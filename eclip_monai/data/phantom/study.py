"""One phantom study in memory: images, ground truth, report, labels and a gaze reading; no files.

Everything is drawn from one seed, so a study is the same whichever worker draws it. The generator writes
these objects in the public layouts; tests and figures use them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eclip_monai.data.phantom.anatomy import Chest, compose, draw_frontal, draw_lateral, sample_chest
from eclip_monai.data.phantom.devices import Device, draw_devices, sample_devices
from eclip_monai.data.phantom.dicom_writer import PixelEncoding, sample_encoding
from eclip_monai.data.phantom.findings import (
    Finding,
    FindingSpec,
    cardiothoracic_ratio,
    draw_findings,
    sample_specs,
)
from eclip_monai.data.phantom.gaze import Reading, read_image
from eclip_monai.data.phantom.reports import Report, compose_report

ROWS = (320, 448)  # real films are ~3000 pixels; the pipeline resizes to 224 anyway
COLS = (288, 416)


@dataclass
class PhantomImage:
    dicom_id: str
    view: str  # PA / AP / LATERAL / LL
    pixels: np.ndarray = field(repr=False)  # display brightness in [0, 1], (rows, cols)
    encoding: PixelEncoding
    mm_per_pixel: float
    modality: str = "CR"  # CR or DX
    findings: list[Finding] = field(default_factory=list)  # frontal views only
    devices: list[Device] = field(default_factory=list)
    chest: Chest | None = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return self.pixels.shape[0]

    @property
    def cols(self) -> int:
        return self.pixels.shape[1]

    def truth(self) -> dict:
        return {"dicom_id": self.dicom_id, "view": self.view, "rows": self.rows, "cols": self.cols,
                "photometric": self.encoding.photometric, "bits_stored": self.encoding.bits_stored,
                "voi": self.encoding.voi, "modality": self.modality, "mm_per_pixel": self.mm_per_pixel,
                "findings": [f.as_truth() for f in self.findings],
                "devices": [d.as_truth() for d in self.devices]}


@dataclass
class PhantomStudy:
    subject_id: int
    study_id: int
    sex: str
    age: int
    study_date: str  # YYYYMMDD, shifted into the 22nd century like MIMIC
    study_time: str  # HHMMSS.fff
    images: list[PhantomImage]  # the frontal image first
    report: Report
    reading: Reading | None  # gaze on the frontal image, when this study was read with an eye tracker
    format_seed: np.random.SeedSequence  # randomness left for the file-format encoders

    @property
    def frontal(self) -> PhantomImage:
        return self.images[0]


def dicom_uid_like(rng: np.random.Generator) -> str:
    """MIMIC-CXR's dicom_id shape: five dash-separated groups of eight hex digits."""
    return "-".join(f"{int(v):08x}" for v in rng.integers(0, 2**32, size=5))


def image_size(rng: np.random.Generator) -> tuple[int, int]:
    rows, cols = int(rng.integers(ROWS[0], ROWS[1] + 1)), int(rng.integers(COLS[0], COLS[1] + 1))
    return rows, cols + (8 if rows == cols else 0)


def render_frontal(
    rng: np.random.Generator,
    *,
    view: str = "PA",
    specs: list[FindingSpec] | None = None,
    device_names: list[str] | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, Chest, list[Finding], list[Device]]:
    """A frontal film with ``specs`` and ``device_names`` (each sampled, for ``view``, when None)."""
    specs = sample_specs(rng) if specs is None else specs
    rows, cols = size or image_size(rng)
    chest = sample_chest(rng, rows, cols, cardiothoracic_ratio(rng, specs))
    layers = draw_frontal(chest, rng)
    findings = draw_findings(chest, layers, rng, specs)
    names = sample_devices(rng, view) if device_names is None else device_names
    devices = draw_devices(chest, layers, rng, names)
    noise = rng.uniform(0.009, 0.013) if view == "PA" else rng.uniform(0.013, 0.02)
    return compose(layers, rng, noise), chest, findings, devices


def simulate_study(
    seed: int | np.random.SeedSequence,
    *,
    subject_id: int = 10000032,
    study_id: int = 50414267,
    sex: str = "F",
    age: int = 60,
    read_with_gaze: bool = False,
    normal_rate: float = 0.3,
) -> PhantomStudy:
    """Draw one MIMIC-CXR-like study: a PA or AP film, a lateral in about a third, the report, the gaze."""
    sequence = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    content, formats = sequence.spawn(2)
    rng = np.random.default_rng(content)
    view = "AP" if rng.random() < 0.35 else "PA"
    has_lateral = rng.random() < (0.45 if view == "PA" else 0.1)
    pixels, chest, findings, devices = render_frontal(rng, view=view, specs=sample_specs(rng, normal_rate))
    mm = round(float(rng.uniform(0.95, 1.15)), 4)
    modality = "DX" if rng.random() < 0.4 else "CR"
    frontal = PhantomImage(dicom_uid_like(rng), view, pixels, sample_encoding(rng), mm, modality, findings,
                           devices, chest)
    images = [frontal]
    if has_lateral:
        rows, cols = image_size(rng)
        lateral = draw_lateral(rng, rows, cols, rng.uniform(0.009, 0.013))
        lateral_view = "LL" if rng.random() < 0.3 else "LATERAL"
        encoding = sample_encoding(rng)
        images.append(PhantomImage(dicom_uid_like(rng), lateral_view, lateral, encoding, mm, modality))
    report = compose_report(rng, findings, devices, view=view, has_lateral=has_lateral, sex=sex, age=age,
                            mm_per_pixel=mm)
    reading = read_image(rng, chest, findings) if read_with_gaze else None
    date = f"{int(rng.integers(2110, 2200))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    hour, minute, second, millis = (int(rng.integers(0, n)) for n in (24, 60, 60, 1000))
    time = f"{hour:02d}{minute:02d}{second:02d}.{millis:03d}"
    return PhantomStudy(subject_id, study_id, sex, age, date, time, images, report, reading, formats)
