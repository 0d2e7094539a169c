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

Memory is bounded before any pixel is decoded, so a hostile file (an upload to the MONAI Label app, a corrupt
file in a datalist) cannot make a reader allocate what its header claims: the file (and, for deflated
syntax, the inflated dataset) may not exceed ``max_pixel_bytes`` plus ``HEADER_ALLOWANCE``; the declared
Rows × Columns × NumberOfFrames × SamplesPerPixel × bytes per sample may not exceed ``max_pixel_bytes``, nor
the pixels ``max_pixels`` (every decoded pixel becomes several float64 working copies); a compressed frame's
own codestream header (JPEG, JPEG-LS, JPEG 2000 SIZ) must declare the same single-component Rows × Columns,
because decoders allocate from the codestream, not from the DICOM header; and the longer side may be at most
``max_aspect_ratio`` times the shorter (resizing the shorter side to the network's size would otherwise
blow a 1-pixel-high strip up to gigapixels). The defaults (32 Mpx, 64 MiB) are about twice the largest
chest X-ray detectors (43 × 43 cm at 0.1 mm is 4300 × 4300 = 18.5 Mpx).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Hashable, Mapping

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from pydicom.encaps import generate_fragmented_frames
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi

from eclip_monai.errors import CXRDataError

__all__ = ["HEADER_ALLOWANCE", "LoadCXRDicom", "LoadCXRDicomd", "MAX_ASPECT_RATIO", "MAX_PIXELS",
           "MAX_PIXEL_BYTES", "check_image_size"]

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
MAX_PIXELS = 2**25  # 32 Mpx (5792²): about twice the largest chest X-ray detector
MAX_PIXEL_BYTES = 2**26  # 64 MiB of stored samples: 32 Mpx at 16 bits
MAX_ASPECT_RATIO = 16.0  # a radiograph is never a strip; a strip's shorter side resized up would explode
HEADER_ALLOWANCE = 2**24  # 16 MiB of non-pixel elements on top of the pixel bytes, in the file or inflated
_INFLATE_CHUNK = 2**20


class LoadCXRDicom(Transform):
    """Read one single-frame grayscale DICOM into a (1, rows, cols) float32 ``MetaTensor`` in [0, 1].

    The meta dictionary holds ``filename_or_obj``, ``spatial_shape`` (rows, cols of the original; the
    gaze transforms scale fixations from it), ``spacing`` (row, col mm from ImagerPixelSpacing, else
    PixelSpacing, else 1.0) with ``spacing_source`` naming where it came from ("default" when absent),
    ``view`` (ViewPosition, "" when absent), ``photometric``, ``bits_stored``, ``modality`` and ``voi``.
    The affine scales (row, col) indices by the spacing, so MONAI spatial transforms keep it consistent.

    Args:
        max_pixels: most pixels (Rows × Columns × frames × samples) a file may declare.
        max_pixel_bytes: most bytes of stored samples a file may declare; the file itself (or its inflated
            dataset) may be ``HEADER_ALLOWANCE`` larger.
        max_aspect_ratio: most the longer side may exceed the shorter one by (a factor).
    """

    def __init__(self, max_pixels: int = MAX_PIXELS, max_pixel_bytes: int = MAX_PIXEL_BYTES,
                 max_aspect_ratio: float = MAX_ASPECT_RATIO):
        self.max_pixels = int(max_pixels)
        self.max_pixel_bytes = int(max_pixel_bytes)
        self.max_aspect_ratio = float(max_aspect_ratio)

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = os.fspath(path)
        ds = _read_dataset(path, self.max_pixel_bytes + HEADER_ALLOWANCE)
        self._check_declared_size(ds, path)
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

    def _check_declared_size(self, ds: pydicom.Dataset, path: str) -> None:
        """Refuse, from the header alone, what would take more than the caps to decode."""
        if "PixelData" not in ds:
            raise CXRDataError("expected a PixelData element, found none (not an image object)", path=path,
                               field="PixelData")
        for keyword in ("Rows", "Columns", "BitsAllocated"):
            if _int(ds, keyword, path, 0) <= 0:
                raise CXRDataError("expected a positive integer, found it missing, empty or zero", path=path,
                                   field=keyword)
        rows, cols = _int(ds, "Rows", path, 0), _int(ds, "Columns", path, 0)
        planes = max(_int(ds, "NumberOfFrames", path, 1), 1) * max(_int(ds, "SamplesPerPixel", path, 1), 1)
        sample_bytes = -(-_int(ds, "BitsAllocated", path, 0) // 8)
        check_image_size((rows, cols), path, planes=planes, bytes_per_sample=sample_bytes,
                         max_pixels=self.max_pixels, max_bytes=self.max_pixel_bytes,
                         max_aspect_ratio=self.max_aspect_ratio, field="Rows")


def check_image_size(shape: tuple[int, int], path: str, *, planes: int = 1, bytes_per_sample: int = 1,
                     max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_PIXEL_BYTES,
                     max_aspect_ratio: float = MAX_ASPECT_RATIO, field: str = "image") -> None:
    """Raise ``CXRDataError`` when a declared (rows, cols) × ``planes`` image exceeds a cap; call it before
    decoding (every reader shares these caps, so no container is a way around them)."""
    rows, cols = (int(n) for n in shape)
    pixels = rows * cols * planes
    if pixels > max_pixels:
        raise CXRDataError(f"declares {rows} x {cols} x {planes} = {pixels:,} pixels; expected at most "
                           f"{max_pixels:,} (refused before decoding)", path=path, field=field)
    if pixels * bytes_per_sample > max_bytes:
        raise CXRDataError(f"declares {pixels * bytes_per_sample:,} bytes of pixel data; expected at most "
                           f"{max_bytes:,} (refused before decoding)", path=path, field=field)
    if rows > 0 and cols > 0 and max(rows, cols) > max_aspect_ratio * min(rows, cols):
        raise CXRDataError(f"declares {rows} x {cols} pixels; expected the longer side at most "
                           f"{max_aspect_ratio:g} times the shorter (not a radiograph)", path=path,
                           field=field)


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


def _read_dataset(path: str, max_bytes: int) -> pydicom.Dataset:
    """The dataset, read only when the file (and, deflated, its inflated dataset) is within ``max_bytes``:
    pydicom reads every element, and inflates a deflated dataset whole, before a tag can be checked."""
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        reason = f"expected a readable DICOM file, found {type(exc).__name__}: {exc}"
        raise CXRDataError(reason, path=path) from exc
    if size > max_bytes:
        raise CXRDataError(f"file is {size:,} bytes; expected at most {max_bytes:,} (refused before reading)",
                           path=path)
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
            _check_inflated_size(path, max_bytes)
        return pydicom.dcmread(path)
    except CXRDataError:
        raise
    except Exception as exc:  # InvalidDicomError, EOFError, OSError, struct errors from truncated headers...
        reason = f"expected a readable DICOM file, found {type(exc).__name__}: {exc}"
        raise CXRDataError(reason, path=path) from exc


def _check_inflated_size(path: str, max_bytes: int) -> None:
    """Inflate the deflated dataset in bounded chunks, only counting, and refuse it past ``max_bytes``."""
    with open(path, "rb") as f:
        f.seek(128 + 4)  # preamble and DICM
        group_length = f.read(12)  # (0002,0000) UL, explicit VR little endian: tag, VR, length 4, value
        if group_length[:6] != b"\x02\x00\x00\x00UL":
            raise CXRDataError("expected the file meta group length first (needed to find the deflated "
                               "dataset), found none", path=path, field="FileMetaInformationGroupLength")
        f.seek(128 + 4 + 12 + struct.unpack("<I", group_length[8:12])[0])
        inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
        while not inflater.eof and (chunk := f.read(_INFLATE_CHUNK)):
            while chunk and not inflater.eof and total <= max_bytes:  # past eof the tail never empties
                total += len(inflater.decompress(chunk, _INFLATE_CHUNK))
                chunk = inflater.unconsumed_tail
            if total > max_bytes:
                raise CXRDataError(f"deflated dataset inflates to more than {max_bytes:,} bytes (refused "
                                   "before reading)", path=path, field="TransferSyntaxUID")


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
    syntax = None if syntax is None else pydicom.uid.UID(str(syntax).strip())  # may be read as a plain str
    if syntax is not None and not _decodable(syntax):
        reason = f"no decoder available for transfer syntax {syntax.name} ({syntax})" if syntax else \
            "expected a transfer syntax UID, found an empty value"
        raise CXRDataError(reason, path=path, field="TransferSyntaxUID")
    if syntax is not None and syntax.is_encapsulated and syntax != pydicom.uid.RLELossless:
        _check_codestream_size(ds, path)
    try:
        pixels = ds.pixel_array
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # short or corrupt data, decoder failures (the Rust RLE decoder's panics
        # are pyo3 PanicExceptions, which derive from BaseException, not Exception)
        raise CXRDataError(f"could not decode pixel data ({type(exc).__name__}: {exc})", path=path,
                           field="PixelData") from exc
    expected = (int(ds.Rows), int(ds.Columns))
    if pixels.shape != expected:
        raise CXRDataError(f"expected pixel array of shape {expected}, found {pixels.shape}", path=path,
                           field="PixelData")
    return pixels


def _check_codestream_size(ds: pydicom.Dataset, path: str) -> None:
    """JPEG, JPEG-LS and JPEG 2000 decoders size their output from the codestream's own header: it must
    declare the DICOM header's single-component Rows × Columns, which the caps have already bounded."""
    try:
        first = next(generate_fragmented_frames(ds.PixelData, number_of_frames=1))[0]
    except Exception as exc:  # no or broken item tags, an empty PixelData
        raise CXRDataError(f"could not find the first compressed frame ({type(exc).__name__}: {exc})",
                           path=path, field="PixelData") from exc
    declared = _codestream_header(first)
    expected = (int(ds.Rows), int(ds.Columns), 1)
    if declared != expected:
        found = "no readable frame header" if declared is None else \
            "{} x {} with {} component(s)".format(*declared)
        raise CXRDataError(f"compressed frame declares {found}; expected {expected[0]} x {expected[1]} with "
                           "1 component as Rows, Columns, SamplesPerPixel say (refused before decoding)",
                           path=path, field="PixelData")


_JPEG_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}  # JPEG SOF0..15 and JPEG-LS SOF55


def _codestream_header(frame: bytes) -> tuple[int, int, int] | None:
    """(rows, cols, components) from a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ segment; ``None`` if absent."""
    soc = 0 if frame[:4] == b"\xff\x4f\xff\x51" else frame.find(b"jp2c\xff\x4f\xff\x51")  # J2K, or in JP2
    if soc >= 0 and frame[soc:soc + 4] == b"jp2c":
        soc += 4
    if soc >= 0 and len(frame) >= soc + 42:
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">4I", frame[soc + 8 : soc + 24])
        return ysiz - yosiz, xsiz - xosiz, struct.unpack(">H", frame[soc + 40 : soc + 42])[0]
    if frame[:2] != b"\xff\xd8":
        return None
    offset = 2
    while offset + 4 <= len(frame) and frame[offset] == 0xFF:
        marker = frame[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker in _JPEG_SOF:
            if offset + 10 > len(frame):
                return None
            rows, cols = struct.unpack(">HH", frame[offset + 5 : offset + 9])
            return rows, cols, frame[offset + 9]
        elif marker in (0xDA, 0xD9):  # start of scan or end of image before any frame header
            return None
        else:
            offset += 2 + struct.unpack(">H", frame[offset + 2 : offset + 4])[0]
    return None


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
