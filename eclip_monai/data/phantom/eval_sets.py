"""Evaluation sets in their public layouts: CheXpert 5x200 (GLoRIA's CSV), RSNA Pneumonia and OpenI.

Each image is drawn by the same phantom code as the training world, with the findings its set asks about:
exactly one of the five CheXpert classes, consolidation-like pneumonia boxes for RSNA, and reports with
MeSH terms for OpenI. Each item function writes its image(s) and returns its table rows and ground truth.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import generate_uid

from eclip_monai.data import formats
from eclip_monai.data.phantom.anatomy import draw_lateral
from eclip_monai.data.phantom.dicom_writer import SECONDARY_CAPTURE_STORAGE, PixelEncoding, write_dicom
from eclip_monai.data.phantom.findings import make_spec, sample_specs
from eclip_monai.data.phantom.reports import compose_report
from eclip_monai.data.phantom.study import image_size, render_frontal

CHEXPERT_FIRST_PATIENT = 64541  # CheXpert's validation patients are numbered from here
RSNA_NEGATIVE_FINDINGS = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax")  # abnormal but no opacity
MESH_TERMS = {"Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Pleural Effusion",
              "Pneumothorax": "Pneumothorax", "Lung Lesion": "Nodule", "Consolidation": "Consolidation",
              "Atelectasis": "Pulmonary Atelectasis", "Edema": "Pulmonary Edema"}


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def _truth(image: str, pixels: np.ndarray, findings, devices) -> dict:
    return {"image": image, "rows": pixels.shape[0], "cols": pixels.shape[1],
            "findings": [f.as_truth() for f in findings], "devices": [d.as_truth() for d in devices]}


def chexpert_item(root: Path, index: int, label: str, seed: np.random.SeedSequence) -> dict:
    """One frontal JPEG whose only positive among the five classes is ``label``."""
    rng = np.random.default_rng(seed)
    view = "AP" if rng.random() < 0.7 else "PA"
    pixels, _, findings, devices = render_frontal(rng, view=view, specs=[make_spec(rng, label, certain=True)])
    rel = f"CheXpert-v1.0/valid/patient{CHEXPERT_FIRST_PATIENT + index:05d}/study1/view1_frontal.jpg"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_to_uint8(pixels)).save(root / rel, quality=95)
    row = {"Path": rel, "Sex": "Female" if rng.random() < 0.5 else "Male", "Age": int(rng.integers(18, 91)),
           "Frontal/Lateral": "Frontal", "AP/PA": view,
           **{c: 1.0 if c == label else 0.0 for c in formats.CHEXPERT_5X200_CLASSES}}
    if any(d.labelled for d in devices):
        row["Support Devices"] = 1.0
    return {"rows": [row], "truth": [_truth(rel, pixels, findings, devices)]}


def rsna_item(root: Path, positive: bool, seed: np.random.SeedSequence) -> dict:
    """One square 8-bit DICOM; positives carry 1-2 consolidation boxes (one label row per box)."""
    rng = np.random.default_rng(seed)
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    view = "AP" if rng.random() < 0.5 else "PA"
    if positive:
        specs = [make_spec(rng, "Consolidation", certain=True)]
        if rng.random() < 0.35:
            other_side = "left" if specs[0].side == "right" else "right"
            specs.append(replace(make_spec(rng, "Consolidation", certain=True), side=other_side))
        kind = "Lung Opacity"
    elif rng.random() < 2 / 3:
        specs, kind = [], "Normal"
    else:
        specs = [make_spec(rng, str(rng.choice(RSNA_NEGATIVE_FINDINGS)), certain=True)]
        kind = "No Lung Opacity / Not Normal"
    side = int(rng.integers(352, 417))
    pixels, _, findings, devices = render_frontal(rng, view=view, specs=specs, size=(side, side))
    age, sex = int(rng.integers(18, 91)), str(rng.choice(["M", "F"]))
    tags = {"Modality": "CR", "ConversionType": "WSD", "PatientName": patient_id, "PatientID": patient_id,
            "PatientSex": sex, "PatientAge": f"{age:03d}Y", "BodyPartExamined": "CHEST", "ViewPosition": view,
            "StudyInstanceUID": generate_uid(entropy_srcs=[patient_id, "study"]), "SeriesNumber": 1,
            "InstanceNumber": 1, "PixelSpacing": [round(0.168 * 1024 / side, 4)] * 2,
            "SeriesDescription": f"view: {view}"}
    path = root / formats.RSNA_IMAGE_DIR / f"{patient_id}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dicom(path, pixels, PixelEncoding(8, "MONOCHROME2", 0, 255), tags,
                sop_class=SECONDARY_CAPTURE_STORAGE, uid_seed=patient_id)
    boxes = [f for f in findings if f.name == "Consolidation"]
    labels = [{"patientId": patient_id, "x": float(round(f.x - f.rx)), "y": float(round(f.y - f.ry)),
               "width": float(round(2 * f.rx)), "height": float(round(2 * f.ry)), "Target": 1} for f in boxes]
    labels = labels or [{"patientId": patient_id, "Target": 0}]
    return {"labels": labels, "classes": [{"patientId": patient_id, "class": kind}],
            "truth": [_truth(patient_id, pixels, findings, devices)]}


def openi_item(root: Path, uid: int, seed: np.random.SeedSequence) -> dict:
    """One IU X-ray study: a frontal PNG (a lateral in most), its report row and projection rows."""
    rng = np.random.default_rng(seed)
    pixels, _, findings, devices = render_frontal(rng, view="PA", specs=sample_specs(rng, normal_rate=0.4))
    sex = str(rng.choice(["M", "F"]))
    report = compose_report(rng, findings, devices, view="PA", has_lateral=True, sex=sex,
                            age=int(rng.integers(18, 91)), mm_per_pixel=1.0, layout="full")
    series = int(rng.integers(1, 5000))
    image_dir = root / formats.OPENI_IMAGE_DIR
    image_dir.mkdir(parents=True, exist_ok=True)
    frontal = f"{uid}_IM-{series:04d}-1001.dcm.png"
    Image.fromarray(_to_uint8(pixels)).save(image_dir / frontal)
    projections = [{"uid": uid, "filename": frontal, "projection": "Frontal"}]
    if rng.random() < 0.6:
        lateral = f"{uid}_IM-{series:04d}-2001.dcm.png"
        Image.fromarray(_to_uint8(draw_lateral(rng, *image_size(rng), 0.011))).save(image_dir / lateral)
        projections.append({"uid": uid, "filename": lateral, "projection": "Lateral"})
    terms = list(dict.fromkeys(MESH_TERMS[f.name] for f in findings))
    mesh = ";".join(dict.fromkeys(f"{MESH_TERMS[f.name]}/{f.side or 'bilateral'}/{f.severity}"
                                  for f in findings))
    row = {"uid": uid, "MeSH": mesh or "normal", "Problems": ";".join(terms) or "normal",
           "image": "Xray Chest PA and Lateral" if len(projections) > 1 else "Xray Chest PA",
           "indication": report.indication.split("  //")[0].replace("___", "XXXX"), "comparison": "None.",
           "findings": report.findings, "impression": report.impression}
    truth = [_truth(frontal, pixels, findings, devices)]
    return {"reports": [row], "projections": projections, "truth": truth}
