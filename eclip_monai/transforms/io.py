"""Load a chest X-ray from DICOM, PNG/JPG or NIfTI as one (1, rows, cols) float32 ``MetaTensor`` in [0, 1].

Evaluation sets ship in different formats (RSNA as DICOM, CheXpert and OpenI as JPG/PNG), and a network must
see the same pixels whatever the container. DICOM goes through :class:`LoadCXRDicom` (VOI, MONOCHROME1);
other files through MONAI's ``PILReader`` / ``NibabelReader``, which return spatial axes as (x, y) =
(cols, rows), so they are transposed to (rows, cols). PNG/JPG values are display values already: unsigned 8- and
16-bit images are scaled by their bit depth, so a PNG and a DICOM of the same pixels load identically; float
or signed data (NIfTI) is scaled by its own range. NIfTI's stored axes are taken as (x = column, y = row);
its affine is not applied. DICOM is recognised by its ``DICM`` marker, so a misnamed DICOM still loads.

Every container shares the DICOM reader's size caps (``MAX_PIXELS``, ``MAX_PIXEL_BYTES``,
``MAX_ASPECT_RATIO`` in :mod:`~eclip_monai.transforms.dicom`), checked from the PNG/JPG or NIfTI header
before any pixel is decoded, so no file format is a way around them.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import nibabel
import numpy as np
import torch
from PIL import Image
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PILReader
from monai.data.image_reader import ImageReader
from monai.transforms import MapTransform, Transform

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms.dicom import (
    MAX_ASPECT_RATIO,
    MAX_PIXEL_BYTES,
    MAX_PIXELS,
    LoadCXRDicom,
    check_image_size,
)

__all__ = ["LoadCXRImage", "LoadCXRImaged", "is_dicom"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PIL_BITS = {"1": 1, "L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16}  # PIL modes of unsigned grayscale images
_PIL_SAMPLE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}  # other modes: 1 byte


def _to_grayscale(image):
    """Colour and palette PNG/JPGs (some exports are RGB) become luminance, as PIL's ``convert("L")``."""
    return image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr") else image


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM preamble marker ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError as exc:  # a directory, no permission...
        raise CXRDataError(f"expected a readable file, found {type(exc).__name__}: {exc}", path=path) from exc


class LoadCXRImage(Transform):
    """Read a DICOM, PNG/JPG/BMP/TIFF or NIfTI chest X-ray into a (1, rows, cols) float32 image in [0, 1].

    The meta dictionary has the keys :class:`LoadCXRDicom` writes (so mixed batches collate); for non-DICOM
    files ``voi`` is "bits" (scaled by bit depth) or "range", spacing is 1 mm (``spacing_source`` "default").

    Args:
        max_pixels, max_pixel_bytes, max_aspect_ratio: the size caps of every format, checked before
            decoding (see :class:`LoadCXRDicom`).
    """

    def __init__(self, max_pixels: int = MAX_PIXELS, max_pixel_bytes: int = MAX_PIXEL_BYTES,
                 max_aspect_ratio: float = MAX_ASPECT_RATIO):
        self.dicom = LoadCXRDicom(max_pixels, max_pixel_bytes, max_aspect_ratio)
        self.caps = {"max_pixels": int(max_pixels), "max_bytes": int(max_pixel_bytes),
                     "max_aspect_ratio": float(max_aspect_ratio)}
        self.pil = PILReader(converter=_to_grayscale)
        self.nifti = NibabelReader()

    def __call__(self, path: str | os.PathLike) -> MetaTensor:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise CXRDataError("file not found; expected a DICOM, PNG/JPG or NIfTI image", path=path)
        if is_dicom(path):
            return self.dicom(path)
        name = path.lower()
        if name.endswith(PIL_SUFFIXES):
            self._check_pil_size(path)
            pixels, meta = self._read(self.pil, path)
            bits = _PIL_BITS.get(str(meta.get("mode", "")))
        elif name.endswith(NIFTI_SUFFIXES):
            self._check_nifti_size(path)
            (pixels, _), bits = self._read(self.nifti, path), None
        else:
            raise CXRDataError(f"expected a DICOM file or a {'/'.join(PIL_SUFFIXES + NIFTI_SUFFIXES)} image, "
                               "found neither", path=path)
        pixels = np.asarray(pixels)
        if pixels.dtype.kind not in "biuf":  # complex, structured (NIfTI RGB), object...
            raise CXRDataError(f"expected real-valued grayscale pixels, found data type {pixels.dtype}",
                               path=path, field="image")
        pixels = pixels.astype(np.float64)
        if pixels.ndim != 2:
            raise CXRDataError(f"expected a single 2-D grayscale image, found shape {pixels.shape}",
                               path=path, field="image")
        pixels = pixels.T  # (x, y) → (rows, cols)
        if bits is not None:
            scaled, voi = pixels / (2**bits - 1), "bits"
        else:
            low, high = pixels.min(), pixels.max()
            scaled, voi = ((pixels - low) / (high - low) if high > low else np.zeros_like(pixels)), "range"
        if not np.isfinite(scaled).all():
            raise CXRDataError("expected finite pixel values, found NaN or inf", path=path, field="image")
        meta = {
            "filename_or_obj": path,
            "spatial_shape": np.asarray(scaled.shape),
            "spacing": np.asarray((1.0, 1.0)),
            "spacing_source": "default",
            "view": "",
            "photometric": "MONOCHROME2",
            "bits_stored": bits or 0,
            "modality": "",
            "voi": voi,
        }
        pixels = torch.from_numpy(scaled.astype(np.float32)[None])
        return MetaTensor(pixels, affine=torch.eye(4, dtype=torch.float64), meta=meta)

    def _check_pil_size(self, path: str) -> None:
        """Width, height and bands from the PNG/JPG header; PIL decodes nothing until asked."""
        try:
            with Image.open(path) as image:
                (cols, rows), bands, mode = image.size, len(image.getbands()), image.mode
        except Exception as exc:  # not an image, truncated header, PIL's own decompression-bomb refusal
            raise CXRDataError(f"could not read the image ({type(exc).__name__}: {exc})", path=path) from exc
        check_image_size((rows, cols), path, planes=bands, bytes_per_sample=_PIL_SAMPLE_BYTES.get(mode, 1),
                         **self.caps)

    def _check_nifti_size(self, path: str) -> None:
        """The data shape and type from the NIfTI header; nibabel reads the data only when asked."""
        try:
            header = nibabel.load(path).header
            shape, itemsize = tuple(int(n) for n in header.get_data_shape()), header.get_data_dtype().itemsize
        except Exception as exc:  # not NIfTI, a broken header, a broken gzip stream
            raise CXRDataError(f"could not read the NIfTI header ({type(exc).__name__}: {exc})", path=path,
                               field="header") from exc
        if len(shape) < 2 or min(shape) < 1:
            raise CXRDataError(f"expected a 2-D image, found data shape {shape}", path=path, field="dim")
        planes = int(np.prod(shape[2:], dtype=np.int64))
        check_image_size((shape[1], shape[0]), path, planes=planes, bytes_per_sample=itemsize, field="dim",
                         **self.caps)

    @staticmethod
    def _read(reader: ImageReader, path: str) -> tuple[np.ndarray, dict]:
        try:
            return reader.get_data(reader.read(path))
        except Exception as exc:  # decoder errors from PIL / nibabel
            raise CXRDataError(f"could not read the image ({type(exc).__name__}: {exc})", path=path) from exc


class LoadCXRImaged(MapTransform):
    """Dictionary version of :class:`LoadCXRImage`: replaces each path under ``keys`` by its image."""

    def __init__(self, keys: KeysCollection = "image", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadCXRImage()

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d
