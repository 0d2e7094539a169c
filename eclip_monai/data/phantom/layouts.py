"""Writers of the MIMIC-CXR, EGD-CXR and REFLACX layouts (file names and columns from ``formats``).

Per-study functions write that study's own files (DICOMs, report, REFLACX reading folder) and return the
rows it contributes to the shared tables; :func:`write_table` writes a table once every study is done.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

from eclip_monai.data import formats
from eclip_monai.data.phantom.dicom_writer import CR_IMAGE_STORAGE, DX_IMAGE_STORAGE, write_dicom
from eclip_monai.data.phantom.gaze import egd_fixations, egd_padding, reflacx_fixations
from eclip_monai.data.phantom.reports import dictation
from eclip_monai.data.phantom.study import PhantomImage, PhantomStudy

VIEW_MEANINGS = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral",
                 "LL": "left lateral"}
REFLACX_LABEL = {"Cardiomegaly": "Enlarged cardiac silhouette", "Pleural Effusion": "Pleural abnormality",
                 "Pneumothorax": "Pneumothorax", "Lung Lesion": "Lung nodule or mass",
                 "Consolidation": "Consolidation", "Atelectasis": "Atelectasis",
                 "Edema": "Groundglass opacity"}  # phase 3 has no edema label; hazy opacity is the closest
REFLACX_DEVICES = "Support devices"
REFLACX_IMAGE_PREFIX = "physionet.org/files/mimic-cxr/2.0.0/"


def write_table(path: str | os.PathLike, columns: tuple[str, ...], rows: list[dict]) -> None:
    """CSV with exactly ``columns``; None / NaN become blank cells, as in the public releases."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row.get(c)) for c in columns] for row in rows)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return repr(round(float(value), 6))
    return str(value)


def write_mimic_study(mimic_root: Path, study: PhantomStudy, split: str,
                      transfer_syntax: str = "explicit") -> dict[str, list[dict]]:
    """Write a study's DICOMs (pixel data in ``transfer_syntax``) and report; return its metadata, split,
    chexpert and truth rows."""
    report_path = mimic_root / formats.mimic_report_path(study.subject_id, study.study_id)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(study.report.text)
    rows: dict[str, list[dict]] = {"metadata": [], "split": [], "truth": []}
    study_uid = generate_uid(entropy_srcs=[str(study.subject_id), str(study.study_id)])
    for number, image in enumerate(study.images, 1):
        path = mimic_root / formats.mimic_dicom_path(study.subject_id, study.study_id, image.dicom_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        sop_class = DX_IMAGE_STORAGE if image.modality == "DX" else CR_IMAGE_STORAGE
        write_dicom(path, image.pixels, image.encoding, _mimic_tags(study, image, study_uid, number),
                    sop_class=sop_class, uid_seed=image.dicom_id, transfer_syntax=transfer_syntax)
        ids = {"dicom_id": image.dicom_id, "subject_id": study.subject_id, "study_id": study.study_id}
        rows["metadata"].append({
            **ids, "PerformedProcedureStepDescription": study.report.examination, "ViewPosition": image.view,
            "Rows": image.rows, "Columns": image.cols,
            "StudyDate": study.study_date, "StudyTime": study.study_time,
            "ProcedureCodeSequence_CodeMeaning": study.report.examination,
            "ViewCodeSequence_CodeMeaning": VIEW_MEANINGS[image.view],
            "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if image.view == "AP" else "Erect",
        })
        rows["split"].append({**ids, "split": split})
        rows["truth"].append({**ids, "split": split, **image.truth()})
    rows["chexpert"] = [{"subject_id": study.subject_id, "study_id": study.study_id, **study.report.labels}]
    return rows


def _mimic_tags(study: PhantomStudy, image: PhantomImage, study_uid: str, number: int) -> dict:
    tags = {
        "Modality": image.modality, "Manufacturer": "PHANTOM", "BodyPartExamined": "CHEST",
        "PatientName": "___", "PatientID": str(study.subject_id), "PatientSex": study.sex,
        "StudyInstanceUID": study_uid, "StudyID": str(study.study_id), "AccessionNumber": "",
        "StudyDate": study.study_date, "StudyTime": study.study_time,
        "StudyDescription": study.report.examination,
        "SeriesNumber": number, "InstanceNumber": 1, "ViewPosition": image.view,
        "PatientOrientation": ["A", "F"] if image.view in ("LATERAL", "LL") else ["L", "F"],
        "ImagerPixelSpacing": [image.mm_per_pixel, image.mm_per_pixel],
    }
    if image.modality == "DX":  # calibrated spacing at the patient, as many DX vendors add
        tags["PixelSpacing"] = [round(image.mm_per_pixel / 1.1, 4)] * 2
    return tags


def egd_records(study: PhantomStudy, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """The master-sheet row and the fixation rows of a study read for EGD-CXR."""
    image = study.frontal
    names = {f.name for f in image.findings}
    devices = any(d.labelled for d in image.devices)
    normal = int(not names)
    dx1, icd = ("Normal", "") if normal else ("CHF", "I50.9") if "Edema" in names else \
        ("Pneumonia", "J18.9") if "Consolidation" in names else ("Other", "R91.8")
    labels = {
        "Normal": normal, "CHF": int("Edema" in names), "pneumonia": int("Consolidation" in names),
        "consolidation": int("Consolidation" in names),
        "enlarged_cardiac_silhouette": int("Cardiomegaly" in names),
        "linear__patchy_atelectasis": int("Atelectasis" in names), "lobar__segmental_collapse": 0,
        "not_otherwise_specified_opacity___pleural_parenchymal_opacity__": int("Lung Lesion" in names),
        "pleural_effusion_or_thickening": int("Pleural Effusion" in names),
        "pulmonary_edema__hazy_opacity": int("Edema" in names), "normal_anatomically": normal,
        "elevated_hemidiaphragm": 0, "hyperaeration": 0, "vascular_redistribution": int("Edema" in names),
        "support_devices": int(devices),
    }
    master = {
        "dicom_id": image.dicom_id, "path": _dicom_path(study),
        "study_id": study.study_id, "patient_id": study.subject_id,
        "stay_id": int(rng.integers(30_000_000, 40_000_000)),
        "gender": study.sex, "anchor_age": study.age, **egd_padding(image.rows, image.cols), **labels,
        "dx1": dx1, "dx1_icd": icd,
    }
    return master, egd_fixations(rng, study.reading, image.dicom_id, image.rows, image.cols)


def write_reflacx_reading(reflacx_root: Path, reading_id: str, study: PhantomStudy, split: str,
                          rng: np.random.Generator) -> dict:
    """Write ``main_data/<id>/`` (fixations, ellipses, transcription); return the phase-3 metadata row."""
    image = study.frontal
    ellipses = []
    for f in image.findings:
        certainty = int(rng.integers(4, 6)) if f.certain else int(rng.integers(2, 4))
        box = (f.x - f.rx, f.y - f.ry, f.x + f.rx, f.y + f.ry)
        ellipses.append(_ellipse(*box, certainty, REFLACX_LABEL[f.name]))
    for d in image.devices:
        if d.labelled:
            ellipses.append(_ellipse(*d.box, 5, REFLACX_DEVICES))
    low, high = image.encoding.low, image.encoding.high
    window = (int(high - low), int((high + low) // 2))  # stored values, as the viewer showed them
    fixations = reflacx_fixations(rng, study.reading, image.rows, image.cols, window)
    write_table(reflacx_root / formats.REFLACX_FIXATIONS_CSV.format(id=reading_id),
                formats.REFLACX_FIXATION_COLUMNS, fixations)
    write_table(reflacx_root / formats.REFLACX_ELLIPSES_CSV.format(id=reading_id),
                formats.REFLACX_ELLIPSE_COLUMNS, ellipses)
    transcription = dictation(rng, image.findings, image.devices, image.mm_per_pixel)
    (reflacx_root / formats.REFLACX_TRANSCRIPTION.format(id=reading_id)).write_text(transcription)
    certainty = {label: max((e["certainty"] for e in ellipses if e[label]), default=0)
                 for label in formats.REFLACX_PHASE3_LABELS}
    return {
        "id": reading_id, "split": split, "eye_tracking_data_discarded": bool(rng.random() < 0.03),
        "image": REFLACX_IMAGE_PREFIX + _dicom_path(study),
        "dicom_id": image.dicom_id, "subject_id": study.subject_id,
        "image_size_x": image.cols, "image_size_y": image.rows, **certainty,
    }


def _ellipse(x0: float, y0: float, x1: float, y1: float, certainty: int, label: str) -> dict:
    flags = {name: name == label for name in formats.REFLACX_PHASE3_LABELS}
    return {"xmin": round(x0), "ymin": round(y0), "xmax": round(x1), "ymax": round(y1),
            "certainty": certainty, **flags}


def _dicom_path(study: PhantomStudy) -> str:
    """The frontal image's path relative to the MIMIC-CXR root, as the gaze datasets reference it."""
    return formats.mimic_dicom_path(study.subject_id, study.study_id, study.frontal.dicom_id)
