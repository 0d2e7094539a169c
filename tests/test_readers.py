"""Readers and datalists on tiny files written here in the exact public layouts."""

import gzip
import logging

import numpy as np
import pandas as pd
import pytest

from eclip_monai.data import (
    GazeRecord,
    attach_gaze,
    build_mimic_datalist,
    read_egd_fixations,
    read_reflacx_ellipses,
    read_reflacx_fixations,
    read_reflacx_transcription,
)
from eclip_monai.data.formats import (
    CHEXPERT_LABELS,
    EGD_FIXATION_COLUMNS,
    EGD_FIXATIONS_CSV,
    EGD_MASTER_SHEET_COLUMNS,
    EGD_MASTER_SHEET_CSV,
    MIMIC_CHEXPERT_CSV,
    MIMIC_METADATA_COLUMNS,
    MIMIC_METADATA_CSV,
    MIMIC_SPLIT_COLUMNS,
    MIMIC_SPLIT_CSV,
    REFLACX_ELLIPSE_COLUMNS,
    REFLACX_ELLIPSES_CSV,
    REFLACX_FIXATION_COLUMNS,
    REFLACX_FIXATIONS_CSV,
    REFLACX_METADATA_COLUMNS,
    REFLACX_METADATA_CSV,
    REFLACX_TRANSCRIPTION,
    mimic_dicom_path,
    mimic_report_path,
)
from eclip_monai.errors import CXRDataError

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)
 INDICATION:  Cough.
 FINDINGS:
 Small left pleural effusion.
 No pneumothorax.
 IMPRESSION:  Left effusion.
"""

# (subject, study, dicom, view, split, rows, cols); study 2 has a lateral, study 3 is in the test split
IMAGES = [
    (10000032, 50000001, "d-pa", "PA", "train", 300, 200),
    (10000032, 50000001, "d-lat", "LATERAL", "train", 300, 200),
    (10000032, 50000002, "d-ap", "AP", "train", 256, 320),
    (11000011, 50000003, "d-test", "PA", "test", 200, 200),
]


def full_row(columns, **values):
    """A row with every column of the real table (0 where the test does not care), so layouts stay exact."""
    return {c: values.pop(c, 0) for c in columns} | values


def write_mimic(root, images=IMAGES, reports=None, gz=False, drop_column=None, labels=None):
    """MIMIC-CXR-JPG tables + MIMIC-CXR report/DICOM tree; DICOMs are a few bytes (never opened)."""
    root.mkdir(parents=True, exist_ok=True)
    meta = pd.DataFrame([
        full_row(MIMIC_METADATA_COLUMNS, dicom_id=d, subject_id=s, study_id=t, ViewPosition=v, Rows=r,
                 Columns=c)
        for s, t, d, v, _, r, c in images
    ])
    split = pd.DataFrame([full_row(MIMIC_SPLIT_COLUMNS, dicom_id=d, study_id=t, subject_id=s, split=sp)
                          for s, t, d, _, sp, *_ in images])
    studies = sorted({(s, t) for s, t, *_ in images})
    labels = labels or {CHEXPERT_LABELS[0]: 1.0, CHEXPERT_LABELS[1]: -1.0, CHEXPERT_LABELS[2]: 0.0}
    chexpert = pd.DataFrame([{"subject_id": s, "study_id": t, **{k: labels.get(k, np.nan) for k in
                                                                CHEXPERT_LABELS}} for s, t in studies])
    for name, table in ((MIMIC_METADATA_CSV, meta), (MIMIC_SPLIT_CSV, split), (MIMIC_CHEXPERT_CSV, chexpert)):
        if drop_column and name == drop_column[0]:
            table = table.drop(columns=drop_column[1])
        table.to_csv(root / (name + ".gz" if gz else name), index=False, compression="gzip" if gz else None)
    for s, t, d, *_ in images:
        dicom = root / mimic_dicom_path(s, t, d)
        dicom.parent.mkdir(parents=True, exist_ok=True)
        dicom.write_bytes(b"DICM")
    for s, t in studies:
        text = (reports or {}).get(t, REPORT)
        if text is not None:
            (root / mimic_report_path(s, t)).write_text(text)
    return root


# --- MIMIC datalist -------------------------------------------------------------------------------------

def test_datalist_joins_tables_drops_laterals_and_extracts_sections(tmp_path):
    root = write_mimic(tmp_path / "mimic")
    datalist = build_mimic_datalist(root)
    assert [item["dicom_id"] for item in datalist] == ["d-pa", "d-ap"]  # lateral and test-split image gone
    first = datalist[0]
    assert first["image"] == str((root / mimic_dicom_path(10000032, 50000001, "d-pa")).absolute())
    ids = (first["subject_id"], first["study_id"], first["split"], first["view"])
    assert ids == (10000032, 50000001, "train", "PA")
    assert first["report"] == "Small left pleural effusion. No pneumothorax. Left effusion."
    assert "Cough" not in first["report"]
    assert first["labels"].dtype == np.float32 and first["labels"].shape == (len(CHEXPERT_LABELS),)
    np.testing.assert_array_equal(first["labels"][:3], [1.0, -1.0, 0.0])
    assert np.isnan(first["labels"][3:]).all()
    assert not datalist.skipped


def test_datalist_filters_splits_and_keeps_all_views_on_request(tmp_path):
    root = write_mimic(tmp_path / "mimic")
    assert [i["dicom_id"] for i in build_mimic_datalist(root, splits=("test",))] == ["d-test"]
    every_view = build_mimic_datalist(root, splits=("train", "test"), views=None)
    assert {i["dicom_id"] for i in every_view} == {"d-pa", "d-lat", "d-ap", "d-test"}
    with pytest.raises(ValueError, match="unknown split"):
        build_mimic_datalist(root, splits=("val",))


def test_datalist_reads_gzipped_tables_like_plain_ones(tmp_path):
    plain = build_mimic_datalist(write_mimic(tmp_path / "plain"), splits=("train", "test"))
    gz_root = write_mimic(tmp_path / "gz", gz=True)
    assert not (gz_root / MIMIC_METADATA_CSV).exists()
    with gzip.open(gz_root / (MIMIC_METADATA_CSV + ".gz"), "rt") as f:
        assert f.readline().startswith("dicom_id")
    gzipped = build_mimic_datalist(gz_root, splits=("train", "test"))
    assert [(i["dicom_id"], i["report"]) for i in gzipped] == [(i["dicom_id"], i["report"]) for i in plain]


def test_datalist_skips_and_counts_empty_and_missing_reports(tmp_path, caplog):
    reports = {50000001: "INDICATION: cough.\nFINDINGS:\n\nIMPRESSION:\n", 50000002: None}
    root = write_mimic(tmp_path / "mimic", reports=reports)
    with caplog.at_level(logging.WARNING):
        datalist = build_mimic_datalist(root, splits=("train", "test"))
    assert [i["dicom_id"] for i in datalist] == ["d-test"]
    assert datalist.skipped == {"empty_report": 1, "missing_report": 1}
    missing = root.absolute() / mimic_report_path(10000032, 50000002)
    assert datalist.examples["missing_report"] == [str(missing)]
    assert "missing_report=1" in datalist.summary() and "missing_report=1" in caplog.text


def test_datalist_falls_back_to_the_whole_report_on_request(tmp_path):
    root = write_mimic(tmp_path / "mimic", reports={50000001: "PA AND LATERAL: Heart size normal.\n"})
    assert "d-pa" not in [i["dicom_id"] for i in build_mimic_datalist(root)]
    fallback = {i["dicom_id"]: i["report"] for i in build_mimic_datalist(root, fallback_to_full=True)}
    assert fallback["d-pa"] == "Heart size normal."


def test_datalist_skips_missing_dicoms_only_when_files_are_required(tmp_path):
    root = write_mimic(tmp_path / "mimic")
    (root / mimic_dicom_path(10000032, 50000002, "d-ap")).unlink()
    required = build_mimic_datalist(root)
    assert [i["dicom_id"] for i in required] == ["d-pa"] and required.skipped == {"missing_dicom": 1}
    assert [i["dicom_id"] for i in build_mimic_datalist(root, require_files=False)] == ["d-pa", "d-ap"]


def test_datalist_errors_name_the_table_and_column(tmp_path):
    root = write_mimic(tmp_path / "a", drop_column=(MIMIC_METADATA_CSV, "ViewPosition"))
    with pytest.raises(CXRDataError, match=rf"{MIMIC_METADATA_CSV}: ViewPosition: missing column") as error:
        build_mimic_datalist(root)
    assert error.value.field == "ViewPosition"
    root = write_mimic(tmp_path / "b", drop_column=(MIMIC_CHEXPERT_CSV, "Edema"))
    with pytest.raises(CXRDataError, match=rf"{MIMIC_CHEXPERT_CSV}: Edema"):
        build_mimic_datalist(root)
    root = write_mimic(tmp_path / "c")
    (root / MIMIC_SPLIT_CSV).unlink()
    with pytest.raises(CXRDataError, match=rf"{MIMIC_SPLIT_CSV}: file not found; expected {MIMIC_SPLIT_CSV}"):
        build_mimic_datalist(root)


def test_datalist_rejects_labels_outside_the_chexpert_coding(tmp_path):
    root = write_mimic(tmp_path / "a", labels={"Edema": 2.0})
    with pytest.raises(CXRDataError, match=r"Edema: expected 1.0, 0.0, -1.0 or blank, found 2.0 at line 2"):
        build_mimic_datalist(root)
    root = write_mimic(tmp_path / "b", labels={"Edema": "positive"})
    with pytest.raises(CXRDataError, match=r"Edema: expected a number, found 'positive' at line 2"):
        build_mimic_datalist(root)


# --- EGD-CXR --------------------------------------------------------------------------------------------

ROWS, COLS = 300, 200  # non-square, rows > cols so a swapped axis lands off the image
PADS = {"image_top_pad": 20, "image_bottom_pad": 40, "image_left_pad": 150, "image_right_pad": 90}


def screen_fraction(x, y, rows=ROWS, cols=COLS, pads=PADS):
    """Inverse of the EGD-CXR mapping, written independently from the formats.py convention."""
    width = cols + pads["image_left_pad"] + pads["image_right_pad"]
    height = rows + pads["image_top_pad"] + pads["image_bottom_pad"]
    return (x + pads["image_left_pad"]) / width, (y + pads["image_top_pad"]) / height


def egd_row(dicom_id, x, y, duration=0.25, valid=1, original=True, **override):
    fx, fy = screen_fraction(x, y)
    row = full_row(EGD_FIXATION_COLUMNS, DICOM_ID=dicom_id, FPOGX=fx, FPOGY=fy, FPOGS=1.0, FPOGD=duration,
                   FPOGV=valid, X_ORIGINAL=x, Y_ORIGINAL=y) | override
    return row if original else {k: v for k, v in row.items() if k not in ("X_ORIGINAL", "Y_ORIGINAL")}


def write_egd(root, rows, sheet_ids=("img1",), dicom_path=None):
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / EGD_FIXATIONS_CSV, index=False)
    sheet = [full_row(EGD_MASTER_SHEET_COLUMNS, dicom_id=d, path=dicom_path or f"files/{d}.dcm", **PADS)
             for d in sheet_ids]
    pd.DataFrame(sheet).to_csv(root / EGD_MASTER_SHEET_CSV, index=False)
    return root


def write_metadata_sizes(root, sizes):
    root.mkdir(parents=True, exist_ok=True)
    meta = [full_row(MIMIC_METADATA_COLUMNS, dicom_id=d, ViewPosition="PA", Rows=r, Columns=c)
            for d, (r, c) in sizes.items()]
    pd.DataFrame(meta).to_csv(root / MIMIC_METADATA_CSV, index=False)
    return root


def test_egd_screen_fraction_maps_back_to_the_image_pixel_as_column_and_row(tmp_path):
    rows = [egd_row("img1", 170.0, 260.0, duration=0.4), egd_row("img1", 12.5, 3.0)]
    egd = write_egd(tmp_path / "egd", rows)
    mimic = write_metadata_sizes(tmp_path / "mimic", {"img1": (ROWS, COLS)})
    records, stats = read_egd_fixations(egd, mimic_root=mimic)
    record = records["img1"]
    assert record.image_size == (ROWS, COLS) and record.source == "egd-cxr"
    np.testing.assert_allclose(record.fixations, [[170.0, 260.0, 0.4], [12.5, 3.0, 0.25]], atol=1e-3)
    assert record.fixations.dtype == np.float32 and not record.fixations.flags.writeable
    assert stats.kept == 2 and not stats.skipped


def test_egd_image_size_is_solved_from_x_original_without_metadata(tmp_path):
    egd = write_egd(tmp_path / "egd", [egd_row("img1", 170.0, 260.0), egd_row("img1", 40.0, 90.0)])
    records, _ = read_egd_fixations(egd)
    assert records["img1"].image_size == (ROWS, COLS)
    np.testing.assert_allclose(records["img1"].fixations[:, :2], [[170, 260], [40, 90]], atol=1e-3)


def test_egd_image_size_falls_back_to_the_dicom_header(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    egd = write_egd(tmp_path / "egd", [egd_row("img1", 170.0, 260.0, original=False)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = pydicom.Dataset()
    header.file_meta, header.Rows, header.Columns = meta, ROWS, COLS
    (egd / "files").mkdir()
    header.save_as(egd / "files" / "img1.dcm", enforce_file_format=True)
    records, _ = read_egd_fixations(egd)
    assert records["img1"].image_size == (ROWS, COLS)
    np.testing.assert_allclose(records["img1"].fixations[0], [170, 260, 0.25], atol=1e-3)


def test_egd_drops_and_counts_invalid_nan_off_image_and_empty_images(tmp_path):
    rows = [
        egd_row("img1", 50, 60),
        egd_row("img1", 50, 60, valid=0),
        egd_row("img1", 50, 60, FPOGX=np.nan),
        egd_row("img1", 50, 60, duration=0.0),
        egd_row("img1", COLS + 5, 60),  # right of the image, inside the right pad
        egd_row("img1", 50, -10),  # in the top pad
        egd_row("img2", 50, 60, valid=0),  # nothing valid left
        egd_row("ghost", 50, 60),  # not in the master sheet
    ]
    egd = write_egd(tmp_path / "egd", rows, sheet_ids=("img1", "img2"))
    mimic = write_metadata_sizes(tmp_path / "mimic", {"img1": (ROWS, COLS), "img2": (ROWS, COLS)})
    records, stats = read_egd_fixations(egd, mimic_root=mimic)
    assert list(records) == ["img1"] and len(records["img1"].fixations) == 1
    assert stats.kept == 1
    assert stats.dropped == {"invalid": 2, "nan": 1, "non_positive_duration": 1, "off_image": 2}
    assert stats.skipped == {"no_valid_fixation": 1, "not_in_master_sheet": 1}
    assert stats.examples["no_valid_fixation"] == ["img2"]


def test_egd_size_that_disagrees_with_x_original_raises(tmp_path):
    egd = write_egd(tmp_path / "egd", [egd_row("img1", 170.0, 260.0), egd_row("img1", 40.0, 90.0)])
    mimic = write_metadata_sizes(tmp_path / "mimic", {"img1": (COLS, ROWS)})  # rows/cols swapped
    with pytest.raises(CXRDataError, match=rf"fixations.csv: X_ORIGINAL: .*img1.*from {MIMIC_METADATA_CSV}"):
        read_egd_fixations(egd, mimic_root=mimic)


def test_egd_non_numeric_coordinate_names_file_column_and_line(tmp_path):
    egd = write_egd(tmp_path / "egd", [egd_row("img1", 1, 2), egd_row("img1", 1, 2, FPOGY="0.4a")])
    expected = rf"{EGD_FIXATIONS_CSV}: FPOGY: expected a number, found '0.4a' at line 3"
    with pytest.raises(CXRDataError, match=expected):
        read_egd_fixations(egd)
    (egd / EGD_MASTER_SHEET_CSV).unlink()
    with pytest.raises(CXRDataError, match=r"master_sheet.csv: file not found"):
        read_egd_fixations(egd)


# --- REFLACX --------------------------------------------------------------------------------------------

def reflacx_fixation(x, y, start=0.0, end=0.3, ppd=(40.0, 42.0), shown=(0, 0, COLS, ROWS)):
    shown = dict(zip(("xmin_shown_from_image", "ymin_shown_from_image", "xmax_shown_from_image",
                      "ymax_shown_from_image"), shown))
    return full_row(REFLACX_FIXATION_COLUMNS, timestamp_start_fixation=start, timestamp_end_fixation=end,
                    x_position=x, y_position=y, angular_resolution_x_pixels_per_degree=ppd[0],
                    angular_resolution_y_pixels_per_degree=ppd[1], **shown)


def write_reflacx(root, phases):
    """``phases``: phase -> [(reading id, dicom id, discarded, fixation rows or None for an empty file)]."""
    for phase, readings in phases.items():
        meta = root / REFLACX_METADATA_CSV.format(phase=phase)
        meta.parent.mkdir(parents=True, exist_ok=True)
        rows = [full_row(REFLACX_METADATA_COLUMNS, id=rid, eye_tracking_data_discarded=discarded, dicom_id=d,
                         image_size_x=COLS, image_size_y=ROWS)
                for rid, d, discarded, _ in readings]
        pd.DataFrame(rows).to_csv(meta, index=False)
        for rid, _, _, fixations in readings:
            path = root / REFLACX_FIXATIONS_CSV.format(id=rid)
            path.parent.mkdir(parents=True, exist_ok=True)
            if fixations is None:
                path.write_text("")
            else:
                pd.DataFrame(fixations).to_csv(path, index=False)
    return root


def test_reflacx_durations_ppd_and_shown_region_with_off_image_and_off_screen_dropped(tmp_path):
    fixations = [
        reflacx_fixation(10.0, 250.0, start=1.0, end=1.5, ppd=(40, 44), shown=(0, 20, 180, 290)),
        reflacx_fixation(100.0, 30.0, start=2.0, end=2.2, ppd=(50, 54), shown=(5, 10, 150, 280)),
        reflacx_fixation(120.0, 40.0, start=3.0, end=3.1, ppd=(60, 70), shown=(5, 10, 150, 280)),
        reflacx_fixation(COLS + 1.0, 40.0),  # off the image
        reflacx_fixation(170.0, 40.0, shown=(5, 10, 150, 280)),  # on the image but not on screen
        reflacx_fixation(20.0, 40.0, start=4.0, end=4.0),  # zero duration
        reflacx_fixation(np.nan, 40.0),
    ]
    root = write_reflacx(tmp_path / "reflacx", {1: [("P1_r1", "img1", False, fixations)]})
    records, stats = read_reflacx_fixations(root)
    (record,) = records["img1"]
    np.testing.assert_allclose(record.fixations, [[10, 250, 0.5], [100, 30, 0.2], [120, 40, 0.1]], atol=1e-5)
    assert record.pixels_per_degree == pytest.approx(52.0)  # median of the x/y means 42, 52, 65
    assert record.shown_region == (0.0, 10.0, 180.0, 290.0)
    assert record.image_size == (ROWS, COLS) and record.reading_id == "P1_r1" and record.source == "reflacx"
    assert stats.dropped == {"off_image": 1, "off_shown_region": 1, "non_positive_duration": 1, "nan": 1}


def test_reflacx_reads_several_phases_and_readings_per_image_skipping_bad_ones(tmp_path):
    root = write_reflacx(tmp_path / "reflacx", {
        1: [("P1_a", "img1", False, [reflacx_fixation(10, 10)]),
            ("P1_b", "img2", True, [reflacx_fixation(20, 20)]),  # eye tracking discarded
            ("P1_c", "img2", False, None)],  # empty file
        3: [("P3_a", "img1", "True", [reflacx_fixation(30, 30)]),
            ("P3_b", "img1", "False", [reflacx_fixation(40, 40), reflacx_fixation(41, 41)]),
            ("P3_c", "img3", "False", [reflacx_fixation(-1, 40)])],  # no valid fixation
    })  # phase 2 is absent
    records, stats = read_reflacx_fixations(root)
    assert list(records) == ["img1"]
    assert [r.reading_id for r in records["img1"]] == ["P1_a", "P3_b"]
    assert stats.skipped == {"eye_tracking_data_discarded": 2, "empty_fixations_file": 1,
                             "no_valid_fixation": 1}
    with_discarded, _ = read_reflacx_fixations(root, include_discarded=True)
    assert [r.reading_id for r in with_discarded["img1"]] == ["P1_a", "P3_a", "P3_b"]
    assert [r.reading_id for r in with_discarded["img2"]] == ["P1_b"]
    only_phase_3, _ = read_reflacx_fixations(root, phases=(3,))
    assert [r.reading_id for r in only_phase_3["img1"]] == ["P3_b"]


def test_reflacx_errors_for_missing_metadata_files_and_non_numbers(tmp_path):
    with pytest.raises(CXRDataError, match=r"metadata_phase_1.csv: file not found; expected at least one of"):
        read_reflacx_fixations(tmp_path)
    root = write_reflacx(tmp_path / "r", {2: [("P2_a", "img1", False, [reflacx_fixation(10, "ten")])]})
    with pytest.raises(CXRDataError, match=r"P2_a/fixations.csv: y_position: expected a number, found 'ten'"):
        read_reflacx_fixations(root)
    (root / REFLACX_FIXATIONS_CSV.format(id="P2_a")).unlink()
    with pytest.raises(CXRDataError, match=r"P2_a/fixations.csv: file not found; expected the fixations"):
        read_reflacx_fixations(root)


def test_reflacx_ellipses_carry_their_labels_and_transcription_is_read(tmp_path):
    path = tmp_path / REFLACX_ELLIPSES_CSV.format(id="P1_a")
    path.parent.mkdir(parents=True)
    pd.DataFrame([
        full_row(REFLACX_ELLIPSE_COLUMNS, xmin=10, ymin=20, xmax=90, ymax=120, certainty=4, Atelectasis=True,
                 Pneumothorax=True),
        full_row(REFLACX_ELLIPSE_COLUMNS, xmin=5, ymin=6, xmax=7, ymax=8, certainty=2),
    ]).to_csv(path, index=False)
    ellipses = read_reflacx_ellipses(tmp_path, "P1_a")
    assert ellipses[["xmin", "ymin", "xmax", "ymax", "certainty"]].iloc[0].tolist() == [10, 20, 90, 120, 4]
    assert list(ellipses["labels"]) == [("Atelectasis", "Pneumothorax"), ()]
    (tmp_path / REFLACX_TRANSCRIPTION.format(id="P1_a")).write_text("  small left effusion. \n")
    assert read_reflacx_transcription(tmp_path, "P1_a") == "small left effusion."
    with pytest.raises(CXRDataError, match="P9/transcription.txt: file not found"):
        read_reflacx_transcription(tmp_path, "P9")


# --- attach_gaze ----------------------------------------------------------------------------------------

def test_attach_gaze_keeps_only_images_with_gaze_and_combines_readings(tmp_path):
    datalist = [{"dicom_id": d, "report": "r"} for d in ("a", "b", "c")]
    first = GazeRecord("a", [[1, 2, 0.2], [3, 4, 0.4]], (ROWS, COLS), pixels_per_degree=40, source="reflacx")
    second = GazeRecord("a", [[5, 6, 0.6]], (ROWS, COLS), pixels_per_degree=50.0, source="reflacx")
    egd = GazeRecord("c", [[7, 8, 1.0]], (ROWS, COLS), source="egd-cxr")
    records = {"a": [first, second], "c": egd}

    expert = attach_gaze(datalist, records)
    assert [item["dicom_id"] for item in expert] == ["a", "c"]
    np.testing.assert_allclose(expert[0]["fixations"], [[1, 2, 0.2], [3, 4, 0.4], [5, 6, 0.6]])
    assert expert[0]["pixels_per_degree"] == 45.0 and expert[0]["gaze_source"] == "reflacx"
    assert expert[1]["pixels_per_degree"] is None and expert[1]["gaze_source"] == "egd-cxr"
    assert "fixations" not in datalist[0]

    np.testing.assert_allclose(attach_gaze(datalist, records, how="first")[0]["fixations"], first.fixations)
    mean = attach_gaze(datalist, records, how="mean")[0]["fixations"]
    np.testing.assert_allclose(mean[:, 2], [0.1, 0.2, 0.3])
    np.testing.assert_allclose(first.fixations[:, 2], [0.2, 0.4])  # records are not modified


def test_egd_pixels_per_degree_follows_the_screen_scaling(tmp_path):
    egd = write_egd(tmp_path / "egd", [egd_row("img1", 170.0, 260.0)])
    mimic = write_metadata_sizes(tmp_path / "mimic", {"img1": (ROWS, COLS)})
    record = read_egd_fixations(egd, mimic_root=mimic, screen_pixels_per_degree=40.0)[0]["img1"]
    padded_rows = ROWS + PADS["image_top_pad"] + PADS["image_bottom_pad"]
    assert record.pixels_per_degree == pytest.approx(40.0 * padded_rows / 1080)
    assert read_egd_fixations(egd, mimic_root=mimic, screen_pixels_per_degree=None)[0]["img1"].pixels_per_degree is None


def test_expert_datalist_merges_egd_and_reflacx_readings_of_one_image(tmp_path):
    from eclip_monai.data import build_expert_datalist

    egd = write_egd(tmp_path / "egd", [egd_row("img1", 170.0, 260.0, duration=0.4)])
    mimic = write_metadata_sizes(tmp_path / "mimic", {"img1": (ROWS, COLS)})
    datalist = [{"dicom_id": "img1", "image": "a.dcm"}, {"dicom_id": "img2", "image": "b.dcm"}]
    expert = build_expert_datalist(datalist, egd_root=egd, mimic_root=mimic)
    assert [item["dicom_id"] for item in expert] == ["img1"]
    np.testing.assert_allclose(expert[0]["fixations"], [[170.0, 260.0, 0.4]], atol=1e-3)
    assert expert[0]["pixels_per_degree"] > 0
    with pytest.raises(CXRDataError, match="master_sheet|fixations"):
        build_expert_datalist(datalist, egd_root=tmp_path / "missing")
