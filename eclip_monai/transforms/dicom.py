"""Load a chest X-ray DICOM as a radiologist sees it: one float32 ``MetaTensor`` (1, rows, cols) in [0, 1].

Axis convention (shared by every transform in this package): images are channel-first (C, H, W) =
(C, rows, cols), as torchvision, timm and open_clip expect. MONAI's ``PydicomReader`` returns (cols, rows)
and does no VOI or MONOCHROME1 work, hence this loader. Gaze fixations are (N, 3) ``[x, y, duration_s]``
with x = column and y = row in original pixels; heatmaps are (1, H, W) in the image's frame.

Display chain (DICOM PS3.3 C.11, PS3.4 N.2): stored values → modality LUT (Modality LUT Sequence, else
Rescale Slope/Intercept) → VOI (VOI LUT Sequence, else the first Window Center/Width, else the data's own
min..max) → [0, 1] → inverted for MONOCHROME1 *after* VOI, so bright means dense for both photometric
interpretations. Bits above BitsStored are ignored by the decoder; a VOI LUT's output is scaled by the
range of its own table (vendors often declare 16-bit entries but fill 12), a window maps onto [0, 1]
directly. A window with width ≤ 0 (or < 1 for LINEAR) falls back to the data range; a constant image
loads as zeros (ones for MONOCHROME1). ``meta["voi"]`` records which of "lut", "window", "range" was used.

Transfer syntaxes that decode (pydicom 3 with pylibjpeg, -libjpeg, -openjpeg, -rle). Exercised by
``tests/test_transforms_dicom.py`` on monochrome files: implicit/explicit VR little endian, explicit VR big
endian, deflated, RLE lossless, JPEG extended (12-bit), JPEG-LS lossless and near-lossless, JPEG 2000
lossless and lossy. Reported available by pydicom but with no monochrome test file: JPEG baseline, JPEG
lossless (process 14, SV1), HTJ2K. JPEG 2000 Part 2 multi-component has no decoder and is refused, as are
files without the 128-byte preamble and ``DICM`` marker ("not a DICOM file") and the few corrupt
streams in pydicom's corpus the decoders reject.

Every problem with the file raises :class:`~eclip_monai.errors.CXRDataError` naming the file and the
DICOM keyword at fault; pydicom and decoder errors are wrapped, never leaked.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi

from eclip_monai.errors import CXRDataError

__all__ = ["LoadCXRDicom", "LoadCXRDicomd"]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


class LoadCXRDicom(Transform):
    """Read one single-frame grayscale DICOM into a (1, rows, cols) float32 ``MetaTensor`` in [0, 1].

    The meta dictionary holds ``filename_or_obj``, ``spatial_shape`` (rows, cols of the original; the
    gaze transforms scale fixations from it), ``spacing`` (row, col mm from ImagerPixelSpacing, else
    PixelSpacing, else 1.0) with ``spacing_source`` naming where it came from ("default" when absent),
    ``view`` (ViewPosition, "" when absent), ``photometric``, ``bits_stored``, ``modality`` and ``voi``.
    The affine scales (row, col) indices by the spacing, so MONAI spatial transforms keep it consistent.
    """

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = os.fspath(path)
        ds = _read_dataset(path)
        photometric = _check_single_grayscale_frame(ds, path)
        values = _modality(_decode(ds, path), ds, path)
        image, voi = _voi(values, ds, path)
        if photometric == "MONOCHROME1":
            image = 1.0 - image
        if not np.isfinite(image).all():
            raise CXRDataError("expected finite pixel values after modality/VOI LUT, found NaN or inf",
                               path=path, field="PixelData")
        spacing, spacing_source = _spacing(ds, path)
        meta = {
            "filename_or_obj": path,
            "spatial_shape": np.asarray(image.shape),
            "spacing": np.asarray(spacing),
            "spacing_source": spacing_source,
            "view": str(_get(ds, "ViewPosition", path) or ""),
            "photometric": photometric,
            "bits_stored": _int(ds, "BitsStored", path, _int(ds, "BitsAllocated", path, 0)),
            "modality": str(_get(ds, "Modality", path) or ""),
            "voi": voi,
        }
        affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
        return MetaTensor(torch.from_numpy(image.astype(np.float32)[None]), affine=affine, meta=meta)


class LoadCXRDicomd(MapTransform):
    """Dictionary version of :class:`LoadCXRDicom`: replaces each path under ``keys`` by its image."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXRDicom()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


def _read_dataset(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:  # InvalidDicomError, EOFError, OSError, struct errors from truncated headers...
        reason = f"expected a readable DICOM file, found {type(exc).__name__}: {exc}"
        raise CXRDataError(reason, path=path) from exc


def _get(ds: pydicom.Dataset, keyword: str, path: str, default=None):
    """Read one element; pydicom parses values lazily, so a malformed tag only fails here."""
    try:
        return ds.get(keyword, default)
    except Exception as exc:
        reason = f"unreadable value ({type(exc).__name__}: {exc})"
        raise CXRDataError(reason, path=path, field=keyword) from exc


def _int(ds: pydicom.Dataset, keyword: str, path: str, default: int) -> int:
    value = _get(ds, keyword, path)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CXRDataError(f"expected an integer, found {value!r}", path=path, field=keyword) from exc


def _check_single_grayscale_frame(ds: pydicom.Dataset, path: str) -> str:
    if "PixelData" not in ds:
        raise CXRDataError("expected a PixelData element, found none (not an image object)", path=path,
                           field="PixelData")
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if _int(ds, keyword, path, 0) <= 0:
            raise CXRDataError("expected a positive integer, found it missing, empty or zero", path=path,
                               field=keyword)
    frames = _int(ds, "NumberOfFrames", path, 1)
    if frames != 1:
        raise CXRDataError(f"expected a single-frame image, found {frames} frames", path=path,
                           field="NumberOfFrames")
    samples = _int(ds, "SamplesPerPixel", path, 1)
    if samples != 1:
        raise CXRDataError(f"expected 1 sample per pixel (grayscale), found {samples}", path=path,
                           field="SamplesPerPixel")
    photometric = str(_get(ds, "PhotometricInterpretation", path) or "").strip().upper()
    if photometric not in _MONOCHROME:
        raise CXRDataError(f"expected MONOCHROME1 or MONOCHROME2, found {photometric or 'nothing'!r}",
                           path=path, field="PhotometricInterpretation")
    return photometric


def _decode(ds: pydicom.Dataset, path: str) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and not _decodable(syntax):
        raise CXRDataError(f"no decoder available for transfer syntax {syntax.name} ({syntax})", path=path,
                           field="TransferSyntaxUID")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # short or corrupt pixel data, decoder failures
        raise CXRDataError(f"could not decode pixel data ({type(exc).__name__}: {exc})", path=path,
                           field="PixelData") from exc
    expected = (int(ds.Rows), int(ds.Columns))
    if pixels.shape != expected:
        raise CXRDataError(f"expected pixel array of shape {expected}, found {pixels.shape}", path=path,
                           field="PixelData")
    return pixels


def _decodable(syntax: pydicom.uid.UID) -> bool:
    try:
        return not syntax.is_compressed or get_decoder(syntax).is_available
    except (ValueError, NotImplementedError):  # not a transfer syntax UID, or no decoder exists for it at all
        return False


def _modality(pixels: np.ndarray, ds: pydicom.Dataset, path: str) -> np.ndarray:
    field = "ModalityLUTSequence" if "ModalityLUTSequence" in ds else "RescaleSlope"
    try:
        return apply_modality_lut(pixels, ds).astype(np.float64)
    except Exception as exc:
        raise CXRDataError(f"could not apply the modality LUT ({type(exc).__name__}: {exc})", path=path,
                           field=field) from exc


def _voi(values: np.ndarray, ds: pydicom.Dataset, path: str) -> tuple[np.ndarray, str]:
    """Map modality values onto [0, 1] through the VOI LUT, else the window, else the data range."""
    if _get(ds, "VOILUTSequence", path):
        return _voi_lut(values, ds, path), "lut"
    center, width = _get(ds, "WindowCenter", path), _get(ds, "WindowWidth", path)
    center, width = _first(center), _first(width)
    if center is not None and width is not None:
        windowed = _window(values, center, width, ds, path)
        if windowed is not None:
            return windowed, "window"
    low, high = values.min(), values.max()
    return ((values - low) / (high - low) if high > low else np.zeros_like(values)), "range"


def _voi_lut(values: np.ndarray, ds: pydicom.Dataset, path: str) -> np.ndarray:
    try:
        entries, first_mapped = int(ds.VOILUTSequence[0].LUTDescriptor[0]) or 2**16, int(
            ds.VOILUTSequence[0].LUTDescriptor[1])
        table = apply_voi(np.arange(first_mapped, first_mapped + entries), ds).astype(np.float64)
    except Exception as exc:
        raise CXRDataError(f"could not read the VOI LUT ({type(exc).__name__}: {exc})", path=path,
                           field="VOILUTSequence") from exc
    low, high = table.min(), table.max()
    table = (table - low) / (high - low) if high > low else np.zeros_like(table)
    return table[np.clip(np.rint(values) - first_mapped, 0, entries - 1).astype(np.intp)]


def _window(values: np.ndarray, center: float, width: float, ds: pydicom.Dataset,
            path: str) -> np.ndarray | None:
    """DICOM PS3.3 C.11.2.1.2 windowing onto [0, 1]; ``None`` when the width makes the window meaningless."""
    function = str(_get(ds, "VOILUTFunction", path) or "LINEAR").strip().upper()
    if function == "LINEAR":
        if width < 1:
            return None
        return np.clip((values - center + 0.5) / max(width - 1.0, 1e-6) + 0.5, 0.0, 1.0)
    if width <= 0:
        return None
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700, 700)))
    raise CXRDataError(f"expected LINEAR, LINEAR_EXACT or SIGMOID, found {function!r}", path=path,
                       field="VOILUTFunction")


def _first(value) -> float | None:
    """Window Center/Width may be multi-valued (alternative windows); the first is the default view."""
    try:
        number = float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _spacing(ds: pydicom.Dataset, path: str) -> tuple[tuple[float, float], str]:
    """(row, col) mm per pixel; detector spacing first (CR/DX often lack the body-plane PixelSpacing)."""
    for keyword in ("ImagerPixelSpacing", "PixelSpacing"):
        value = _get(ds, keyword, path)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0 and np.isfinite([row, col]).all():
            return (row, col), keyword
    return (1.0, 1.0), "default"
