"""The PACS side of the app: radiographs read over DICOMweb, results stored back as DICOM objects.

``--studies http://host:port/dicom-web`` makes the app use :class:`RadiographDICOMwebDatastore`, MONAI Label's
DICOMweb datastore narrowed to what a chest X-ray service needs:

* image ids are SeriesInstanceUIDs of radiograph series (``modalities``, CR/DX by default), so the SR and
  Secondary Capture series the app writes back are not offered as images;
* an image is the series' DICOM file as the PACS stored it: MONAI Label's NIfTI conversion would drop the VOI
  LUT window and the MONOCHROME1 inversion that ``LoadCXRDicom`` applies, and the scores would no longer equal
  those of the same file read locally;
* an id that is not a DICOM UID is refused before it reaches a path or a query (no ``../`` in a cache path).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

import pydicom
from dicomweb_client import DICOMwebClient
from monailabel.datastore.dicom import DICOMWebDatastore
from pydicom.dataset import Dataset

from eclip_monai.inference.dicom_results import findings_sr, overlay_secondary_capture
from eclip_monai.transforms.heatmap import FixationsToHeatmap
from eclip_monai.transforms.io import LoadCXRImage
from eclip_monai.transforms.overlay import HeatmapOverlay

logger = logging.getLogger(__name__)

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
SERIES_UID, MODALITY = "0020000E", "00080060"


def is_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and UID.match(value) is not None


class RadiographDICOMwebDatastore(DICOMWebDatastore):
    """MONAI Label's :class:`DICOMWebDatastore` serving radiograph series as single DICOM files.

    Args:
        client: the DICOMweb client of the PACS.
        cache_path: where downloaded series are kept (MONAI Label's default: ``~/.cache/monailabel/dicom``).
        modalities: the series modalities offered as images.
    """

    def __init__(self, client: DICOMwebClient, cache_path: str | None = None,
                 modalities: Sequence[str] = ("CR", "DX")):
        super().__init__(client, search_filter={}, cache_path=cache_path, convert_to_nifti=False)
        self.modalities = tuple(modalities)

    def list_images(self) -> list[str]:
        return [str(series[SERIES_UID]["Value"][0]) for series in self._client.search_for_series()
                if series.get(MODALITY, {}).get("Value", [None])[0] in self.modalities]

    def has_image(self, image_id: str) -> bool:
        """Whether ``image_id`` is a radiograph series in the PACS (one QIDO query, no download)."""
        if not is_uid(image_id):
            return False
        found = self._client.search_for_series(search_filters={"SeriesInstanceUID": image_id})
        return any(s.get(MODALITY, {}).get("Value", [None])[0] in self.modalities for s in found)

    def get_image_uri(self, image_id: str) -> str:
        """The series' first instance (by InstanceNumber) as a local DICOM file, downloaded once."""
        if not is_uid(image_id):
            raise ValueError(f"image id {image_id!r}: expected a SeriesInstanceUID")
        folder = super().get_image_uri(image_id)
        files = sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".dcm"))
        if not files:
            raise FileNotFoundError(f"series {image_id}: the PACS returned no instances")
        if len(files) == 1:
            return files[0]
        logger.warning(f"series {image_id}: {len(files)} instances; scoring the first by InstanceNumber")
        return min(files, key=lambda f: int(pydicom.dcmread(f, stop_before_pixels=True).get("InstanceNumber") or 0))

    def store(self, datasets: Sequence[Dataset]) -> None:
        """STOW-RS ``datasets`` (e.g. an SR and a Secondary Capture) into the PACS."""
        self._client.store_instances(list(datasets))


def dicom_results(source_path: str, probabilities: dict[str, float], gaze: dict | None) -> list[Dataset]:
    """The objects stored back for one scored radiograph: the findings SR and, when the request carried the
    reader's gaze, the gaze overlay as a Secondary Capture at the radiograph's own resolution."""
    source = pydicom.dcmread(source_path)
    results: list[Dataset] = [findings_sr(source, probabilities)]
    if gaze is not None:
        image = LoadCXRImage()(source_path)
        shape = tuple(image.shape[1:])
        heatmap = FixationsToHeatmap()(gaze["fixations"], shape, shape, gaze["pixels_per_degree"], path=source_path)
        results.append(overlay_secondary_capture(source, HeatmapOverlay(mode="color")(image, heatmap).numpy()))
    return results
