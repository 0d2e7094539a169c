"""Real DICOM files for the phantom: the pixel encodings a chest X-ray reader meets in the wild.

Stored values vary in bit depth (12-16 of 16 allocated), photometric interpretation (MONOCHROME1 stores the
inverted values), modality rescale and VOI (window centre/width, or a non-linear VOI LUT sequence). Every
combination is built so that the standard pipeline (modality LUT, then VOI, then inverting MONOCHROME1)
shows the same picture, which is what a reader's tests check. Pixel data is stored uncompressed (Explicit VR
Little Endian) by default, or losslessly compressed (RLE, JPEG 2000) with the pylibjpeg encoders, so that the
decoders MIMIC-CXR-scale data goes through are exercised and timed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
LUT_OUTPUT_BITS = 12
# name (as the generator's ``transfer_syntax`` option) -> UID; every one decodes with pydicom + pylibjpeg
TRANSFER_SYNTAXES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg2000": JPEG2000Lossless}


@dataclass(frozen=True)
class PixelEncoding:
    """How [0, 1] brightness becomes stored values, and which tags say how to undo it."""

    bits_stored: int
    photometric: str  # MONOCHROME1 or MONOCHROME2
    low: int  # stored value of brightness 0 under MONOCHROME2
    high: int  # stored value of brightness 1 under MONOCHROME2
    rescale: tuple[float, float] | None = None  # (slope, intercept) of the modality LUT
    voi: str = "none"  # window / lut / none

    @property
    def max_value(self) -> int:
        return 2**self.bits_stored - 1

    @property
    def bits_allocated(self) -> int:
        return 8 if self.bits_stored <= 8 else 16


def sample_encoding(rng: np.random.Generator) -> PixelEncoding:
    bits = int(rng.choice([12, 14, 15, 16], p=[0.4, 0.25, 0.1, 0.25]))
    top = 2**bits - 1
    voi = str(rng.choice(["window", "lut", "none"], p=[0.5, 0.35, 0.15]))
    if voi == "lut" and bits > 14:  # a LUT over every 15/16-bit value would be 64-128 KB per file
        voi = "window"
    rescale = None
    if voi != "lut" and rng.random() < 0.4:
        rescale = [(1.0, 0.0), (1.0, -1024.0), (2.0, 0.0), (0.5, 100.0)][int(rng.integers(4))]
    low = int(top * rng.uniform(0.0, 0.12))
    high = int(top * rng.uniform(0.75, 1.0))
    photometric = "MONOCHROME1" if rng.random() < 0.4 else "MONOCHROME2"
    return PixelEncoding(bits, photometric, low, high, rescale, voi)


def encode(image: np.ndarray, enc: PixelEncoding) -> np.ndarray:
    """Stored values: MONOCHROME2 maps [0, 1] onto [low, high]; MONOCHROME1 stores ``max_value`` minus it."""
    stored = np.rint(enc.low + np.clip(image, 0.0, 1.0) * (enc.high - enc.low)).astype(np.int64)
    if enc.photometric == "MONOCHROME1":
        stored = enc.max_value - stored
    return stored.astype(np.uint8 if enc.bits_allocated == 8 else np.uint16)


def voi_tags(enc: PixelEncoding) -> Dataset:
    """Rescale and VOI elements for ``enc``, mirrored for MONOCHROME1 so the displayed image is unchanged."""
    ds = Dataset()
    slope, intercept = enc.rescale or (1.0, 0.0)
    if enc.rescale:
        ds.RescaleSlope = _ds(slope)
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleType = "US"
    inverted = enc.photometric == "MONOCHROME1"
    if enc.voi == "window":
        span = enc.high - enc.low
        centre = slope * (enc.low + enc.high) / 2 + intercept
        mirror = slope * enc.max_value + 2 * intercept  # m1 = mirror - m2 for the same pixel
        ds.WindowCenter = _ds(mirror - centre if inverted else centre)
        ds.WindowWidth = _ds(slope * span * 0.96)
        ds.WindowCenterWidthExplanation = "PHANTOM"
    elif enc.voi == "lut":
        values = np.arange(enc.max_value + 1, dtype=np.float64)
        mid, span = (enc.low + enc.high) / 2, enc.high - enc.low
        curve = 1 / (1 + np.exp(-(values - mid) / (span / 7)))  # S-shaped, like a vendor's processing curve
        curve = (curve - curve.min()) / (curve.max() - curve.min())
        lut = np.rint(curve * (2**LUT_OUTPUT_BITS - 1)).astype("<u2")
        if inverted:
            lut = (2**LUT_OUTPUT_BITS - 1) - lut[::-1]
        item = Dataset()
        item.add_new(0x00283002, "US", [enc.max_value + 1, 0, LUT_OUTPUT_BITS])  # LUTDescriptor
        item.LUTExplanation = "PHANTOM S-CURVE"
        item.add_new(0x00283006, "OW", lut.tobytes())  # LUTData
        ds.VOILUTSequence = Sequence([item])
    return ds


def write_dicom(path: str | os.PathLike, image: np.ndarray, enc: PixelEncoding, tags: dict, *,
                sop_class: str = CR_IMAGE_STORAGE, uid_seed: str, transfer_syntax: str = "explicit") -> None:
    """Write ``image`` (brightness in [0, 1]) with ``enc`` plus patient/study ``tags`` (DICOM keywords), its
    pixel data in ``transfer_syntax`` (a key of ``TRANSFER_SYNTAXES``; the compressed ones are lossless).

    UIDs are derived from ``uid_seed`` so the same study gives a byte-identical file on every run.
    """
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[uid_seed, "instance"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # compress() below switches it
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[uid_seed, "series"])
    if sop_class == DX_IMAGE_STORAGE:
        ds.PresentationIntentType = "FOR PRESENTATION"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    stored = encode(image, enc)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = enc.photometric
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = enc.bits_allocated
    ds.BitsStored = enc.bits_stored
    ds.HighBit = enc.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.update(voi_tags(enc))
    ds.PixelData = stored.tobytes()
    if syntax.is_compressed:
        ds.compress(syntax, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    return f"{value:.6g}"
