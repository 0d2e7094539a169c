"""Evaluation-set adapters (CheXpert 5x200, RSNA, CXR14, OpenI) on files in the public layouts, and
LoadCXRImage reading DICOM, PNG/JPG and NIfTI into the same image. The writers here also feed
test_evaluate_bundle.py."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from eclip_monai.data.eval_sets import (
    RSNA_CLASSES,
    load_chexpert_5x200,
    load_cxr14,
    load_openi,
    load_rsna_pneumonia,
)
from eclip_monai.data.formats import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_5X200_CSV,
    CHEXPERT_COLUMNS,
    CXR14_CLASSES,
    CXR14_COLUMNS,
    CXR14_CSV,
    MIMIC_CHEXPERT_COLUMNS,
    MIMIC_CHEXPERT_CSV,
    MIMIC_METADATA_COLUMNS,
    MIMIC_METADATA_CSV,
    MIMIC_SPLIT_COLUMNS,
    MIMIC_SPLIT_CSV,
    OPENI_PROJECTION_COLUMNS,
    OPENI_PROJECTIONS_CSV,
    OPENI_REPORT_COLUMNS,
    OPENI_REPORTS_CSV,
    RSNA_LABEL_COLUMNS,
    RSNA_LABELS_CSV,
    mimic_dicom_path,
    mimic_report_path,
)
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation import eval_image_transforms
from eclip_monai.transforms.io import LoadCXRImage, LoadCXRImaged

FINDING_WORDS = ("atelectasis", "cardiomegaly", "consolidation", "edema", "pleural effusion")


# --- writers of the public layouts ------------------------------------------------------------------------
def chest(seed: int, rows: int = 40, cols: int = 56) -> np.ndarray:
    """A non-square uint8 'radiograph' with a seeded blob, using the full 0..255 range."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:rows, 0:cols]
    y, x = rng.uniform(0, rows), rng.uniform(0, cols)
    image = 0.3 + 0.2 * (c / cols) + 0.5 * np.exp(-((r - y) ** 2 + (c - x) ** 2) / rng.uniform(20, 80))
    image = (image - image.min()) / (image.max() - image.min())
    return np.rint(255 * image).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    ds.set_pixel_data(pixels, photometric, 8 * pixels.itemsize)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_png(path: Path, pixels: np.ndarray, **save_kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_kwargs)
    return path


def write_csv(path: Path, columns, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_chexpert_5x200(root: Path, n: int = 10) -> list[int]:
    """``n`` JPG images, class i % 5; other classes 0.0, -1.0 or blank as in the real table."""
    rows, labels = [], []
    for i in range(n):
        label = i % 5
        rel = f"CheXpert-v1.0/valid/patient{i:05d}/study1/view1_frontal.jpg"
        write_png(root / rel, chest(i), quality=95)
        row = {c: "" for c in CHEXPERT_COLUMNS} | {"Path": rel, "Frontal/Lateral": "Frontal", "AP/PA": "PA"}
        for j, name in enumerate(CHEXPERT_5X200_CLASSES):
            row[name] = "1.0" if j == label else ("-1.0", "0.0", "")[(i + j) % 3]
        rows.append(row)
        labels.append(label)
    write_csv(root / CHEXPERT_5X200_CSV, CHEXPERT_COLUMNS, rows)
    return labels


def write_rsna(root: Path, n: int = 10) -> list[int]:
    """Odd patients have pneumonia with two boxes (two rows); even ones a blank-box row with Target 0."""
    rows, labels = [], []
    for i in range(n):
        pid = f"{i:04d}abcd-rsna"
        target = i % 2
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", chest(100 + i))
        boxes = ([10, 8, 12, 14], [30, 9, 10, 12]) if target else (["", "", "", ""],)
        rows += [dict(zip(RSNA_LABEL_COLUMNS, [pid, *box, target])) for box in boxes]
        labels.append(target)
    write_csv(root / RSNA_LABELS_CSV, RSNA_LABEL_COLUMNS, rows)
    return labels


def write_cxr14(root: Path) -> dict[str, str]:
    findings = {"00000001_000.png": "Cardiomegaly|Effusion", "00000002_000.png": "No Finding",
                "00000003_000.png": "Hernia", "00000004_000.png": "Mass|Nodule|Pneumothorax"}
    rows = []
    for i, (name, labels) in enumerate(findings.items()):
        write_png(root / "images" / name, chest(200 + i))
        rows.append({c: "" for c in CXR14_COLUMNS} | {"Image Index": name, "Finding Labels": labels,
                                                       "Patient ID": i + 1, "View Position": "PA"})
    write_csv(root / CXR14_CSV, CXR14_COLUMNS, rows)
    return findings


def write_openi(root: Path, n: int = 10) -> dict[str, str]:
    """``n`` studies with a frontal and a lateral PNG each; study 0 has an empty report; reports repeat
    every 5 studies (duplicate texts, as normal reports do). Returns filename -> expected report."""
    reports, projections, expected = [], [], {}
    for i in range(n):
        uid = str(i + 1)
        findings = "" if i == 0 else f"There is {FINDING_WORDS[i % 5]}.  Heart size normal."
        impression = "" if i == 0 else f"Findings of {FINDING_WORDS[i % 5]}."
        values = [uid, "", "", f"Xray {uid}", "", "", findings, impression]
        reports.append(dict(zip(OPENI_REPORT_COLUMNS, values)))
        for view, projection in (("4001", "Frontal"), ("3001", "Lateral")):
            filename = f"{uid}_IM-{i:04d}-{view}.dcm.png"
            write_png(root / "images" / "images_normalized" / filename, chest(300 + 2 * i + (view == "3001")))
            projections.append(dict(zip(OPENI_PROJECTION_COLUMNS, [uid, filename, projection])))
            if projection == "Frontal" and i:
                expected[filename] = " ".join(f"{findings} {impression}".split())
    write_csv(root / OPENI_REPORTS_CSV, OPENI_REPORT_COLUMNS, reports)
    write_csv(root / OPENI_PROJECTIONS_CSV, OPENI_PROJECTION_COLUMNS, projections)
    return expected


def write_mimic_test_split(root: Path, n: int = 8) -> None:
    """A MIMIC-CXR(-JPG) layout whose ``n`` frontal DICOMs are all in the test split."""
    meta, split, chexpert = [], [], []
    for i in range(n):
        subject, study, dicom = 10000000 + i, 50000000 + i, f"d{i:03d}-mimic"
        write_dicom(root / mimic_dicom_path(subject, study, dicom), chest(400 + i), photometric="MONOCHROME1")
        report = root / mimic_report_path(subject, study)
        report.write_text(f"FINAL REPORT\n FINDINGS: There is {FINDING_WORDS[i % 5]}.\n"
                          f" IMPRESSION: {FINDING_WORDS[i % 5].capitalize()} seen.\n")
        meta.append({c: "" for c in MIMIC_METADATA_COLUMNS} | {"dicom_id": dicom, "subject_id": subject,
                                                               "study_id": study, "ViewPosition": "PA"})
        split.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": "test"})
        chexpert.append({c: "" for c in MIMIC_CHEXPERT_COLUMNS} | {"subject_id": subject, "study_id": study})
    write_csv(root / MIMIC_METADATA_CSV, MIMIC_METADATA_COLUMNS, meta)
    write_csv(root / MIMIC_SPLIT_CSV, MIMIC_SPLIT_COLUMNS, split)
    write_csv(root / MIMIC_CHEXPERT_CSV, MIMIC_CHEXPERT_COLUMNS, chexpert)


def write_eval_sets(dataset_dir: Path, n: int = 10) -> None:
    """Every evaluation layout under ``dataset_dir`` as the phantom generator names them."""
    write_chexpert_5x200(dataset_dir / "chexpert_5x200", n)
    write_rsna(dataset_dir / "rsna", n)
    write_openi(dataset_dir / "openi", n)
    write_mimic_test_split(dataset_dir / "mimic-cxr", n)


# --- adapters ---------------------------------------------------------------------------------------------
def test_chexpert_5x200_labels_are_the_one_positive_class_with_paths_under_the_root(tmp_path):
    labels = write_chexpert_5x200(tmp_path, 10)
    datalist, classes = load_chexpert_5x200(tmp_path)
    assert classes == CHEXPERT_5X200_CLASSES
    assert [item["label"] for item in datalist] == labels
    assert datalist[3]["image"] == str(tmp_path / "CheXpert-v1.0/valid/patient00003/study1/view1_frontal.jpg")


def test_chexpert_row_without_exactly_one_positive_names_the_line(tmp_path):
    labels = write_chexpert_5x200(tmp_path, 5)
    path = tmp_path / CHEXPERT_5X200_CSV
    rows = list(csv.DictReader(path.open()))
    rows[2][CHEXPERT_5X200_CLASSES[labels[2]]] = "0.0"  # line 4: header + two rows before it
    write_csv(path, CHEXPERT_COLUMNS, rows)
    with pytest.raises(CXRDataError, match=r"exactly one .* found 0 at line 4") as error:
        load_chexpert_5x200(tmp_path)
    assert error.value.path == str(path)


def test_rsna_is_one_item_per_patient_in_file_order(tmp_path):
    labels = write_rsna(tmp_path, 6)
    datalist, classes = load_rsna_pneumonia(tmp_path)
    assert classes == RSNA_CLASSES
    assert [item["label"] for item in datalist] == labels  # pneumonia patients had two box rows each
    assert datalist[1]["image"].endswith(os.path.join("stage_2_train_images", "0001abcd-rsna.dcm"))


def test_rsna_target_other_than_0_or_1_is_refused(tmp_path):
    write_rsna(tmp_path, 2)
    path = tmp_path / RSNA_LABELS_CSV
    path.write_text(path.read_text().replace(",0\n", ",2\n", 1))
    with pytest.raises(CXRDataError, match="expected 0 or 1, found 2.0 at line 2") as error:
        load_rsna_pneumonia(tmp_path)
    assert error.value.field == "Target"


def test_cxr14_labels_are_multi_hot_and_no_finding_is_all_zero(tmp_path):
    findings = write_cxr14(tmp_path)
    datalist, classes = load_cxr14(tmp_path)
    assert classes == CXR14_CLASSES
    for item, labels in zip(datalist, findings.values()):
        expected = {label for label in labels.split("|") if label != "No Finding"}
        assert {classes[i] for i in np.flatnonzero(item["label"])} == expected
    assert datalist[1]["label"].sum() == 0


def test_cxr14_image_list_keeps_only_the_listed_images(tmp_path):
    write_cxr14(tmp_path)
    (tmp_path / "test_list.txt").write_text("00000002_000.png\n00000004_000.png\n")
    datalist, _ = load_cxr14(tmp_path, image_list="test_list.txt")
    assert [Path(item["image"]).name for item in datalist] == ["00000002_000.png", "00000004_000.png"]


def test_cxr14_unknown_finding_names_line_and_column(tmp_path):
    write_cxr14(tmp_path)
    path = tmp_path / CXR14_CSV
    path.write_text(path.read_text().replace("Hernia", "Hernia|Scoliosis"))
    with pytest.raises(CXRDataError, match="found 'Scoliosis' at line 4") as error:
        load_cxr14(tmp_path)
    assert error.value.field == "Finding Labels"


def test_openi_keeps_frontal_images_with_findings_plus_impression_and_counts_empty_reports(tmp_path):
    expected = write_openi(tmp_path, 6)
    datalist, classes = load_openi(tmp_path)
    assert classes == ()
    assert {Path(item["image"]).name: item["report"] for item in datalist} == expected
    assert datalist.skipped == {"empty_report": 1}


@pytest.mark.parametrize(
    "writer, loader, table, column",
    [
        (write_chexpert_5x200, load_chexpert_5x200, CHEXPERT_5X200_CSV, "Pleural Effusion"),
        (write_rsna, load_rsna_pneumonia, RSNA_LABELS_CSV, "Target"),
        (lambda root, n: write_cxr14(root), load_cxr14, CXR14_CSV, "Finding Labels"),
        (write_openi, load_openi, OPENI_PROJECTIONS_CSV, "projection"),
    ],
)
def test_missing_column_or_table_names_the_file_and_column(tmp_path, writer, loader, table, column):
    writer(tmp_path, 4)
    path = tmp_path / table
    rows = list(csv.DictReader(path.open()))
    kept = [c for c in rows[0] if c != column]
    write_csv(path, kept, [{c: r[c] for c in kept} for r in rows])
    with pytest.raises(CXRDataError, match=f"missing column '{column}'") as error:
        loader(tmp_path)
    assert (error.value.path, error.value.field) == (str(path), column)
    path.unlink()
    with pytest.raises(CXRDataError, match="file not found") as error:
        loader(tmp_path)
    assert error.value.path == str(path)


def test_a_missing_image_is_skipped_and_counted_not_fatal(tmp_path):
    write_rsna(tmp_path, 4)
    (tmp_path / "stage_2_train_images" / "0002abcd-rsna.dcm").unlink()
    datalist, _ = load_rsna_pneumonia(tmp_path)
    assert len(datalist) == 3 and datalist.skipped == {"missing_image": 1}


# --- LoadCXRImage -------------------------------------------------------------------------------------------
def test_png_and_dicom_of_the_same_pixels_load_identically_in_rows_cols_order(tmp_path):
    pixels = chest(0, rows=30, cols=50)
    png = LoadCXRImage()(write_png(tmp_path / "a.png", pixels))
    dicom = LoadCXRImage()(write_dicom(tmp_path / "a.dcm", pixels))
    assert png.shape == dicom.shape == (1, 30, 50)
    torch.testing.assert_close(png, dicom, atol=1e-6, rtol=0)
    torch.testing.assert_close(png[0], torch.from_numpy(pixels / 255.0).float())
    assert png.meta.keys() == dicom.meta.keys()  # mixed batches collate


def test_16_bit_png_scales_by_bit_depth_and_rgb_jpg_becomes_grayscale(tmp_path):
    pixels16 = (chest(1).astype(np.uint16) * 257)
    image = LoadCXRImage()(write_png(tmp_path / "a16.png", pixels16))
    torch.testing.assert_close(image[0], torch.from_numpy(pixels16 / 65535.0).float())
    gray = chest(2)
    rgb = LoadCXRImage()(write_png(tmp_path / "rgb.jpg", np.stack([gray] * 3, -1), quality=100))
    assert rgb.shape == (1, *gray.shape)
    assert (rgb[0] - torch.from_numpy(gray / 255.0)).abs().max() < 0.03  # JPEG loss only


def test_nifti_stored_as_x_y_loads_as_rows_cols(tmp_path):
    pixels = chest(3, rows=30, cols=50)
    path = tmp_path / "a.nii.gz"
    nib.save(nib.Nifti1Image(pixels.T.astype(np.float32), np.eye(4)), path)  # NIfTI's first axis: x (column)
    image = LoadCXRImage()(path)
    torch.testing.assert_close(image[0], torch.from_numpy(pixels / 255.0).float())  # 0..255 → range scaling


def test_dicom_is_recognised_by_content_whatever_its_name(tmp_path):
    pixels = chest(4)
    misnamed = write_dicom(tmp_path / "view1_frontal.png", pixels, photometric="MONOCHROME1")
    image = LoadCXRImage()(misnamed)
    torch.testing.assert_close(image[0], torch.from_numpy(1 - pixels / 255.0).float())  # inverted as DICOM


@pytest.mark.parametrize("name, content", [("a.gif", b"GIF89a"), ("b.png", b"not a png"), ("c.png", None)])
def test_unreadable_or_unknown_images_raise_cxr_data_error_naming_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CXRDataError) as error:
        LoadCXRImaged("image")({"image": str(path)})
    assert error.value.path == str(path)


def test_eval_chain_gives_the_same_tensor_for_png_and_dicom(tmp_path):
    pixels = chest(5, rows=60, cols=44)
    chain = eval_image_transforms(32)
    png = chain({"image": str(write_png(tmp_path / "a.png", pixels))})["image"]
    dicom = chain({"image": str(write_dicom(tmp_path / "a.dcm", pixels))})["image"]
    assert png.shape == (1, 32, 32)
    torch.testing.assert_close(png.as_tensor(), dicom.as_tensor(), atol=1e-5, rtol=0)
