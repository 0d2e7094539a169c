"""Results a PACS stores and a viewer shows: findings as a DICOM Structured Report, an overlay as a Secondary Capture.

Both objects join the source image's study (same patient and StudyInstanceUID, a new series each) and reference
the source instance, so a viewer files them beside the radiograph they describe:

* :func:`findings_sr` — a Comprehensive SR holding a TID 1500 measurement report: one measurement group for the
  source image, one coded measurement per finding whose value is P(finding present) (unit "1", no units).
  Findings with a SNOMED CT code are coded with it; any other finding name gets a code in the private scheme
  ``99ECLIP`` so the report stays valid for custom finding sets.
* :func:`overlay_secondary_capture` — an RGB Secondary Capture of the radiograph blended with a heatmap (a
  reader's gaze, or a saliency map), e.g. from ``transforms.HeatmapOverlay(mode="color")``.

highdicom builds and checks both; :func:`write_dicom` saves one atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

import eclip_monai

MANUFACTURER = "eclip-monai"
PRIVATE_SCHEME = "99ECLIP"
PROCEDURE = Code("399208008", "SCT", "Plain chest X-ray")
NO_UNITS = Code("1", "UCUM", "no units")
# SNOMED CT concepts of the default findings; other names are coded in PRIVATE_SCHEME
FINDING_CODES: dict[str, Code] = {
    "Atelectasis": Code("46621007", "SCT", "Atelectasis"),
    "Cardiomegaly": Code("8186001", "SCT", "Cardiomegaly"),
    "Consolidation": Code("95436008", "SCT", "Lung consolidation"),
    "Edema": Code("19242006", "SCT", "Pulmonary edema"),
    "Pleural Effusion": Code("60046008", "SCT", "Pleural effusion"),
    "Pneumonia": Code("233604007", "SCT", "Pneumonia"),
    "Pneumothorax": Code("36118008", "SCT", "Pneumothorax"),
}

__all__ = ["FINDING_CODES", "finding_code", "findings_sr", "overlay_secondary_capture", "write_dicom",
           "read_findings_sr"]


def finding_code(name: str) -> Code:
    """The coded concept of a finding: SNOMED CT where known, else ``(name, 99ECLIP, name)``."""
    if not name or not name.strip():
        raise ValueError("finding name is empty; expected a name such as 'Pleural Effusion'")
    return FINDING_CODES.get(name, Code(name.strip()[:16], PRIVATE_SCHEME, name.strip()))


def _algorithm() -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name="eCLIP zero-shot findings", version=eclip_monai.__version__)


def findings_sr(source: pydicom.Dataset, probabilities: Mapping[str, float], *, series_number: int = 901,
                description: str = "eCLIP findings") -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR of ``finding -> probability`` for the image ``source`` (a DICOM dataset).

    Raises:
        ValueError: no findings, or a probability outside [0, 1] or not finite.
    """
    if not probabilities:
        raise ValueError("probabilities is empty; expected at least one finding")
    for name, value in probabilities.items():
        if not 0.0 <= float(value) <= 1.0:  # also false for NaN
            raise ValueError(f"probability of {name!r}: expected a number in [0, 1], found {value!r}")
    source, algorithm = _with_type2_attributes(source), _algorithm()
    measurements = [hd.sr.Measurement(name=finding_code(name), value=float(value), unit=NO_UNITS,
                                      algorithm_id=algorithm) for name, value in probabilities.items()]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=description),
        algorithm_id=algorithm,
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(), name=MANUFACTURER, manufacturer_name=MANUFACTURER),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURE,
        imaging_measurements=[group],
    )
    return hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        series_description=description,
    )


def read_findings_sr(sr: pydicom.Dataset) -> dict[str, float]:
    """``finding -> probability`` back from an SR written by :func:`findings_sr`, by the finding names used
    there (a SNOMED CT code maps back to its name in :data:`FINDING_CODES`)."""
    names = {(code.scheme_designator, code.value): name for name, code in FINDING_CODES.items()}
    found: dict[str, float] = {}
    for group in hd.sr.utils.find_content_items(sr, name=codes.DCM.MeasurementGroup, recursive=True):
        for item in getattr(group, "ContentSequence", []):
            if item.ValueType == "NUM":
                concept = item.ConceptNameCodeSequence[0]
                name = names.get((concept.CodingSchemeDesignator, concept.CodeValue), concept.CodeMeaning)
                found[str(name)] = float(item.MeasuredValueSequence[0].NumericValue)
    return found


def overlay_secondary_capture(source: pydicom.Dataset, rgb: np.ndarray, *, series_number: int = 902,
                              description: str = "eCLIP gaze overlay") -> hd.sc.SCImage:
    """An RGB Secondary Capture of ``rgb`` ((3, H, W) or (H, W, 3), floats in [0, 1] or uint8) in the study
    of ``source``, referencing it as its source image."""
    source, pixels = _with_type2_attributes(source), np.asarray(rgb)
    if pixels.ndim == 3 and pixels.shape[0] == 3 and pixels.shape[-1] != 3:
        pixels = np.moveaxis(pixels, 0, -1)
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"rgb: expected a (3, H, W) or (H, W, 3) colour image, found shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        if not np.isfinite(pixels).all():
            raise ValueError("rgb: expected finite values in [0, 1], found NaN or Inf")
        pixels = np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=np.ascontiguousarray(pixels),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, patient_orientation=_orientation(source),
        series_description=description,
    )
    image.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"  # not a paired part: no Laterality
    reference = pydicom.Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    image.SourceImageSequence = [reference]
    return image


# patient/study attributes both IODs require to be present (Type 2: empty allowed); sources often omit them
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _with_type2_attributes(source: pydicom.Dataset) -> pydicom.Dataset:
    """``source`` itself, or a shallow copy with the missing Type 2 patient/study attributes present and empty."""
    missing = [keyword for keyword in _TYPE2 if keyword not in source]
    if not missing:
        return source
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"source image: expected the DICOM attribute {keyword}, found none")
    completed = pydicom.Dataset(source)
    for keyword in missing:
        setattr(completed, keyword, "")
    return completed


def _orientation(source: pydicom.Dataset) -> tuple[str, str]:
    """The source's PatientOrientation (required in the patient coordinate system); PA chest default."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(value):
        return str(value[0]), str(value[1])
    return "L", "F"


def write_dicom(dataset: pydicom.Dataset, path: str | os.PathLike) -> str:
    """Save ``dataset`` to ``path`` atomically (a temporary file renamed into place); returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".dcm.tmp")
    os.close(fd)
    try:
        dataset.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
