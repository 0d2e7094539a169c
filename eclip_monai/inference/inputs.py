"""Inference inputs: a folder of chest X-rays → datalist, and the evaluation preprocessing of any format.

Outputs are named after each input file, so two inputs with the same name but different formats (``a.png`` and
``a.dcm``) would overwrite each other's results: the datalist refuses them up front rather than silently
keeping one.
"""

from __future__ import annotations

import os
from pathlib import Path

from monai.transforms import Compose

from eclip_monai.errors import CXRDataError
from eclip_monai.transforms.io import NIFTI_SUFFIXES, PIL_SUFFIXES, LoadCXRImaged, is_dicom
from eclip_monai.transforms.pipelines import CXRKeys, eval_transforms

__all__ = ["IMAGE_SUFFIXES", "image_datalist", "image_stem", "inference_transforms"]

IMAGE_SUFFIXES = (".dcm", ".dicom", *PIL_SUFFIXES, *NIFTI_SUFFIXES)


def image_stem(path: str | os.PathLike) -> str:
    """File name without its image suffix (``x.nii.gz`` → ``x``): the name of the outputs written for it."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_datalist(input_dir: str | os.PathLike, key: str = "image", missing_ok: bool = False
                   ) -> list[dict[str, str]]:
    """``[{key: path}]`` for the chest X-rays directly in ``input_dir``, sorted by name.

    Files with an image suffix (DICOM, PNG/JPG/BMP/TIFF, NIfTI) are taken, and so are extension-less DICOMs
    (recognised by their ``DICM`` marker); hidden files and other files are ignored. ``missing_ok`` gives
    ``[]`` for a folder that does not exist: the bundle builds its dataset whenever the config is parsed or
    checked (``check_properties``), and checks the folder only when it runs.
    """
    folder = Path(input_dir)
    if missing_ok and not folder.exists():
        return []
    if not folder.is_dir():
        raise CXRDataError("expected a directory of chest X-ray files (DICOM, PNG/JPG, NIfTI), found none",
                           path=folder, field="input_dir")
    paths = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
             and (p.name.lower().endswith(IMAGE_SUFFIXES) or is_dicom(p))]
    if not paths:
        raise CXRDataError(f"expected chest X-ray files ({', '.join(IMAGE_SUFFIXES)} or DICOM), found none",
                           path=folder, field="input_dir")
    seen: dict[str, Path] = {}
    for path in paths:
        other = seen.setdefault(image_stem(path), path)
        if other != path:
            raise CXRDataError(f"{other.name} and {path.name} would write results under the same name "
                               f"{image_stem(path)!r}; rename one", path=folder, field="input_dir")
    return [{key: os.fspath(p.resolve())} for p in paths]


def inference_transforms(image_size: int = 224, key: str = "image", mean: float = 0.58, std: float = 0.26
                         ) -> Compose:
    """The evaluation chain (shortest side to ``image_size``, centre crop, normalisation) with a loader that
    reads DICOM, PNG/JPG and NIfTI alike, so every format reaches the network as the same pixels."""
    return eval_transforms(image_size, keys=CXRKeys(image=key), mean=mean, std=std, loader=LoadCXRImaged)
