"""Load a chest X-ray from DICOM, PNG/JPG or NIfTI as one (1, rows, cols) float32 ``MetaTensor`` in [0, 1].

Evaluation sets ship in different formats (RSNA as DICOM, CheXpert and OpenI as JPG/PNG), and a network must
see the same pixels whatever the container. DICOM goes through :class:`LoadCXRDicom` (VOI, MONOCHROME1);
other files through MONAI's ``PILReader`` / ``NibabelReader``, which return spatial axes as (x, y) =
(cols, rows), so they are transposed to (rows, cols). PNG/JPG values are display values already: unsigned 8- and
16-bit images are scaled by their bit depth, so a PNG and a DICOM of the same pixels load identically; float
or signed data (NIfTI) is scaled by its own range. NIfTI's stored axes are taken as (x = column, y = row);
its affine is not applied. DICOM is recognised by its ``DICM`` marker, so a misnamed DICOM still loads.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor, NibabelReader, PILReader
from monai.data.image_reader import ImageReader
from monai.transforms import MapTransform, Transform

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms.dicom import LoadCXRDicom

__all__ = ["LoadCXRImage", "LoadCXRImaged", "is_dicom"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PIL_BITS = {"1": 1, "L": 8, "I;16": 16, "I;16B": 16, "I;16L": 16}  # PIL modes of unsigned grayscale images


def _to_grayscale(image):
    """Colour and palette PNG/JPGs (some exports are RGB) become luminance, as PIL's ``convert("L")``."""
    return image.convert("L") if image.mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr") else image


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM preamble marker ``DICM`` at byte 128."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


class LoadCXRImage(Transform):
    """Read a DICOM, PNG/JPG/BMP/TIFF or NIfTI chest X-ray into a (1, rows, cols) float32 image in [0, 1].

    The meta dictionary has the keys :class:`LoadCXRDicom` writes (so mixed batches collate); for non-DICOM
    files ``voi`` is "bits" (scaled by bit depth) or "range", spacing is 1 mm (``spacing_source`` "default").
    """

    def __init__(self):
        self.dicom = LoadCXRDicom()
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
            pixels, meta = self._read(self.pil, path)
            bits = _PIL_BITS.get(str(meta.get("mode", "")))
        elif name.endswith(NIFTI_SUFFIXES):
            (pixels, _), bits = self._read(self.nifti, path), None
        else:
            raise CXRDataError(f"expected a DICOM file or a {'/'.join(PIL_SUFFIXES + NIFTI_SUFFIXES)} image, "
                               "found neither", path=path)
        pixels = np.asarray(pixels, dtype=np.float64)
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
