"""The phantom world: deterministic, in the real public layouts, with labels, reports and gaze that agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image, ImageDraw
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from eclip_monai.data import formats
from eclip_monai.data.phantom import ensure_phantom, generate_phantom, simulate_study
from eclip_monai.data.phantom.cli import main
from eclip_monai.data.phantom.anatomy import AIR_DARKENING, Layers, draw_frontal, sample_chest
from eclip_monai.data.phantom.devices import SUPPORT_DEVICES
from eclip_monai.data.phantom.dicom_writer import PixelEncoding, write_dicom
from eclip_monai.data.phantom.findings import cardiothoracic_ratio, draw_findings, make_spec
from eclip_monai.data.phantom.generate import DONE_FILE, TRUTH_FILE
from eclip_monai.data.phantom.reports import compose_report
from eclip_monai.data.reports import extract_report_text
from eclip_monai.errors import CXRDataError

OPTIONS = dict(studies=30, egd_fraction=0.3, reflacx_fraction=0.3, eval_size=10, progress=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(out, seed=0, workers=1, **OPTIONS)
    return out


@pytest.fixture(scope="module")
def truth(world) -> list[dict]:
    return [json.loads(line) for line in (world / TRUTH_FILE).read_text().splitlines()]


def _mimic(world: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(world / "mimic-cxr" / name)


def _files(root: Path) -> dict[str, bytes]:
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != DONE_FILE]  # it names its folder
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _header(path: Path) -> tuple[str, ...]:
    with open(path, newline="") as handle:
        return tuple(next(csv.reader(handle)))


def test_same_seed_gives_byte_identical_world_whatever_the_worker_count(world, tmp_path):
    generate_phantom(tmp_path, seed=0, workers=2, **OPTIONS)
    first, second = _files(world), _files(tmp_path)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_different_seed_gives_different_studies(world, tmp_path):
    generate_phantom(tmp_path, seed=1, workers=1, **{**OPTIONS, "eval_size": 0})
    for name in (formats.MIMIC_METADATA_CSV, formats.MIMIC_CHEXPERT_CSV):
        assert (tmp_path / "mimic-cxr" / name).read_bytes() != (world / "mimic-cxr" / name).read_bytes()
    assert not np.array_equal(simulate_study(0).frontal.pixels, simulate_study(1).frontal.pixels)


def test_every_dicom_opens_with_required_tags_and_varied_encodings(world, truth):
    metadata = _mimic(world, formats.MIMIC_METADATA_CSV).set_index("dicom_id")
    photometrics, voi_styles, shapes = set(), set(), set()
    for record in truth:
        relative = formats.mimic_dicom_path(record["subject_id"], record["study_id"], record["dicom_id"])
        path = world / "mimic-cxr" / relative
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert ds.PatientID == str(record["subject_id"]) and ds.StudyInstanceUID and ds.SOPInstanceUID
        assert ds.ViewPosition == record["view"] == metadata.loc[record["dicom_id"], "ViewPosition"]
        assert (ds.Rows, ds.Columns) == (record["rows"], record["cols"])
        assert len(ds.ImagerPixelSpacing) == 2
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16 and ds.HighBit == ds.BitsStored - 1
        assert int(ds.pixel_array.max()) <= 2**ds.BitsStored - 1
        photometrics.add(ds.PhotometricInterpretation)
        voi_styles.add("lut" if "VOILUTSequence" in ds else "window" if "WindowCenter" in ds else "none")
        shapes.add(ds.Rows == ds.Columns)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert {"lut", "window"} <= voi_styles
    assert False in shapes
    assert set(metadata["ViewPosition"]) & {"LATERAL", "LL"}, "readers must meet lateral images to filter"


@pytest.mark.parametrize("voi, rescale, bits",
                         [("window", (2.0, 0.0), 16), ("lut", None, 12), ("none", (1.0, -1024.0), 14)])
def test_monochrome1_stores_inverted_values_and_displays_the_same(tmp_path, voi, rescale, bits):
    image = np.random.default_rng(0).random((24, 20)).astype(np.float32)
    displayed, stored = {}, {}
    for photometric in ("MONOCHROME1", "MONOCHROME2"):
        enc = PixelEncoding(bits, photometric, 40, int(0.9 * 2**bits), rescale, voi)
        write_dicom(tmp_path / f"{photometric}.dcm", image, enc, {"PatientID": "1"}, uid_seed=photometric)
        ds = pydicom.dcmread(tmp_path / f"{photometric}.dcm")
        stored[photometric] = ds.pixel_array.astype(np.int64)
        shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
        shown = (shown - shown.min()) / (shown.max() - shown.min())
        displayed[photometric] = 1 - shown if photometric == "MONOCHROME1" else shown
    np.testing.assert_array_equal(2**bits - 1 - stored["MONOCHROME1"], stored["MONOCHROME2"])
    np.testing.assert_allclose(displayed["MONOCHROME1"], displayed["MONOCHROME2"], atol=1e-3)


def test_csv_headers_equal_the_public_column_tuples(world):
    reflacx_ids = pd.read_csv(world / "reflacx" / formats.REFLACX_METADATA_CSV.format(phase=3))["id"]
    expected = {
        "mimic-cxr/" + formats.MIMIC_METADATA_CSV: formats.MIMIC_METADATA_COLUMNS,
        "mimic-cxr/" + formats.MIMIC_SPLIT_CSV: formats.MIMIC_SPLIT_COLUMNS,
        "mimic-cxr/" + formats.MIMIC_CHEXPERT_CSV: formats.MIMIC_CHEXPERT_COLUMNS,
        "egd-cxr/" + formats.EGD_FIXATIONS_CSV: formats.EGD_FIXATION_COLUMNS,
        "egd-cxr/" + formats.EGD_MASTER_SHEET_CSV: formats.EGD_MASTER_SHEET_COLUMNS,
        "reflacx/" + formats.REFLACX_METADATA_CSV.format(phase=3): formats.REFLACX_METADATA_COLUMNS,
        "reflacx/" + formats.REFLACX_FIXATIONS_CSV.format(id=reflacx_ids[0]):
            formats.REFLACX_FIXATION_COLUMNS,
        "reflacx/" + formats.REFLACX_ELLIPSES_CSV.format(id=reflacx_ids[0]): formats.REFLACX_ELLIPSE_COLUMNS,
        "chexpert_5x200/" + formats.CHEXPERT_5X200_CSV: formats.CHEXPERT_COLUMNS,
        "rsna/" + formats.RSNA_LABELS_CSV: formats.RSNA_LABEL_COLUMNS,
        "rsna/" + formats.RSNA_CLASS_INFO_CSV: formats.RSNA_CLASS_INFO_COLUMNS,
        "openi/" + formats.OPENI_REPORTS_CSV: formats.OPENI_REPORT_COLUMNS,
        "openi/" + formats.OPENI_PROJECTIONS_CSV: formats.OPENI_PROJECTION_COLUMNS,
    }
    for name, columns in expected.items():
        assert _header(world / name) == columns, name


def test_ids_and_splits_look_like_mimic_and_split_by_subject(world):
    split = _mimic(world, formats.MIMIC_SPLIT_CSV)
    assert set(split["split"]) == {"train", "validate", "test"}
    assert split.groupby("subject_id")["split"].nunique().max() == 1
    assert split["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert split["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert split["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()


def test_chexpert_labels_agree_with_the_drawn_findings(world, truth):
    labels = _mimic(world, formats.MIMIC_CHEXPERT_CSV).set_index("study_id")
    frontal = [r for r in truth if r["view"] in formats.FRONTAL_VIEWS]
    assert len(frontal) == len(labels) == OPTIONS["studies"]
    for record in frontal:
        row = labels.loc[record["study_id"]]
        drawn = {f["name"]: f["certain"] for f in record["findings"]}
        for name in formats.DEFAULT_FINDINGS:
            if name in drawn:
                assert row[name] == (1.0 if drawn[name] else -1.0), (record["study_id"], name)
            else:
                assert row[name] == 0.0 or np.isnan(row[name]), (record["study_id"], name)
        assert (row["No Finding"] == 1.0) == (not drawn)
        assert (row["Support Devices"] == 1.0) == any(d["name"] in SUPPORT_DEVICES for d in record["devices"])
    assert (labels[list(formats.DEFAULT_FINDINGS)] == 0.0).any().any(), "negations must occur"


def test_reports_have_mimic_sections_negations_and_hedges(world, truth):
    texts = [(world / "mimic-cxr" / formats.mimic_report_path(r["subject_id"], r["study_id"])).read_text()
             for r in truth if r["view"] in formats.FRONTAL_VIEWS]
    assert all("FINAL REPORT" in t and "INDICATION:" in t for t in texts)
    readable = 0
    for text in texts:
        try:
            readable += bool(extract_report_text(text))
        except CXRDataError:  # the rare report with neither FINDINGS nor IMPRESSION
            pass
    assert 0.85 * len(texts) <= readable
    joined = " ".join(texts).lower()
    assert " no " in joined and any(h in joined for h in ("possible", "cannot exclude", "may represent"))


@pytest.mark.parametrize("layout, readable",
                         [("full", True), ("impression_only", True), ("no_sections", False)])
def test_report_layouts_are_what_readers_expect(layout, readable):
    study = simulate_study(3)
    report = compose_report(np.random.default_rng(0), study.frontal.findings, study.frontal.devices,
                            view="PA", has_lateral=True, sex="F", age=50, mm_per_pixel=1.0, layout=layout)
    if readable:
        assert extract_report_text(report.text)
    else:
        with pytest.raises(CXRDataError):
            extract_report_text(report.text)


def test_egd_fixations_map_back_to_original_pixels_through_the_padding(world):
    fixations = pd.read_csv(world / "egd-cxr" / formats.EGD_FIXATIONS_CSV)
    sheet = pd.read_csv(world / "egd-cxr" / formats.EGD_MASTER_SHEET_CSV).set_index("dicom_id")
    metadata = _mimic(world, formats.MIMIC_METADATA_CSV).set_index("dicom_id")
    frame = fixations.join(sheet, on="DICOM_ID").join(metadata[["Rows", "Columns"]], on="DICOM_ID")
    assert set(frame["path"].map(lambda p: (world / "mimic-cxr" / p).is_file())) == {True}
    valid = frame[(frame["FPOGV"] == 1) & frame["FPOGX"].notna()]
    left, right, top, bottom = (valid[f"image_{s}_pad"] for s in ("left", "right", "top", "bottom"))
    x = valid["FPOGX"] * (valid["Columns"] + left + right) - left
    y = valid["FPOGY"] * (valid["Rows"] + top + bottom) - top
    assert (x - valid["X_ORIGINAL"]).abs().max() <= 1 and (y - valid["Y_ORIGINAL"]).abs().max() <= 1
    off_image = (valid["X_ORIGINAL"] < 0) | (valid["X_ORIGINAL"] >= valid["Columns"])
    assert (frame["FPOGV"] == 0).any() and frame["FPOGX"].isna().any() and off_image.any()
    counts = fixations.groupby("DICOM_ID").size()
    assert counts.between(20, 60).all()
    assert fixations["FPOGD"].between(0.1, 1.2).all()


def test_gaze_dwells_on_the_drawn_findings(world, truth):
    by_id = {r["dicom_id"]: r for r in truth if r["findings"]}
    readings = []
    egd = pd.read_csv(world / "egd-cxr" / formats.EGD_FIXATIONS_CSV)
    egd = egd[(egd["FPOGV"] == 1) & egd["X_ORIGINAL"].notna()]
    for dicom_id, rows in egd.groupby("DICOM_ID"):
        readings.append((dicom_id, rows["X_ORIGINAL"], rows["Y_ORIGINAL"], rows["FPOGD"]))
    meta = pd.read_csv(world / "reflacx" / formats.REFLACX_METADATA_CSV.format(phase=3))
    for reading_id, dicom_id in zip(meta["id"], meta["dicom_id"]):
        rows = pd.read_csv(world / "reflacx" / formats.REFLACX_FIXATIONS_CSV.format(id=reading_id)).dropna()
        duration = rows["timestamp_end_fixation"] - rows["timestamp_start_fixation"]
        readings.append((dicom_id, rows["x_position"], rows["y_position"], duration))
    inside_time = total_time = inside_area = total_area = 0.0
    for dicom_id, xs, ys, durations in readings:
        if dicom_id not in by_id:
            continue
        record = by_id[dicom_id]
        yy, xx = np.ogrid[: record["rows"], : record["cols"]]
        region = np.zeros((record["rows"], record["cols"]), dtype=bool)
        for f in record["findings"]:
            region |= ((xx - f["x"]) / (1.5 * f["rx"])) ** 2 + ((yy - f["y"]) / (1.5 * f["ry"])) ** 2 <= 1
        col = np.clip(np.round(xs).astype(int), 0, record["cols"] - 1)
        row = np.clip(np.round(ys).astype(int), 0, record["rows"] - 1)
        inside_time += float(durations[region[row, col]].sum())
        total_time += float(durations.sum())
        inside_area, total_area = inside_area + region.sum(), total_area + region.size
    assert total_time > 0
    assert inside_time / total_time > 2.5 * inside_area / total_area


def test_reflacx_readings_have_ellipses_transcriptions_and_angular_resolution(world, truth):
    meta = pd.read_csv(world / "reflacx" / formats.REFLACX_METADATA_CSV.format(phase=3))
    by_id = {r["dicom_id"]: r for r in truth}
    assert meta["id"].str.fullmatch(r"P300R\d{6}").all() and len(meta) > 0
    off_image = 0
    for reading_id, dicom_id, width in zip(meta["id"], meta["dicom_id"], meta["image_size_x"]):
        ellipses = pd.read_csv(world / "reflacx" / formats.REFLACX_ELLIPSES_CSV.format(id=reading_id))
        labelled_devices = [d for d in by_id[dicom_id]["devices"] if d["name"] in SUPPORT_DEVICES]
        assert len(ellipses) == len(by_id[dicom_id]["findings"]) + len(labelled_devices)
        assert (world / "reflacx" / formats.REFLACX_TRANSCRIPTION.format(id=reading_id)).read_text().strip()
        fixations = pd.read_csv(world / "reflacx" / formats.REFLACX_FIXATIONS_CSV.format(id=reading_id))
        per_degree = fixations["angular_resolution_x_pixels_per_degree"].iloc[0]
        assert 0.02 <= per_degree / width <= 0.03
        x = fixations["x_position"]
        off_image += int((x.isna() | (x < 0) | (x >= width)).sum())
    assert off_image > 0, "readers must meet fixations to drop"


def test_evaluation_layouts_reference_existing_images(world):
    chexpert = pd.read_csv(world / "chexpert_5x200" / formats.CHEXPERT_5X200_CSV)
    assert chexpert["Path"].map(lambda p: (world / "chexpert_5x200" / p).is_file()).all()
    assert (chexpert[list(formats.CHEXPERT_5X200_CLASSES)] == 1.0).sum(axis=1).eq(1).all()
    assert chexpert[list(formats.CHEXPERT_5X200_CLASSES)].sum().nunique() == 1  # class-balanced

    labels = pd.read_csv(world / "rsna" / formats.RSNA_LABELS_CSV)
    images = world / "rsna" / formats.RSNA_IMAGE_DIR
    assert labels["patientId"].map(lambda p: (images / f"{p}.dcm").is_file()).all()
    assert labels.loc[labels["Target"] == 1, ["x", "y", "width", "height"]].notna().all().all()
    assert labels.loc[labels["Target"] == 0, ["x", "y", "width", "height"]].isna().all().all()
    classes = pd.read_csv(world / "rsna" / formats.RSNA_CLASS_INFO_CSV)
    assert set(classes["class"]) <= {"Lung Opacity", "Normal", "No Lung Opacity / Not Normal"}

    projections = pd.read_csv(world / "openi" / formats.OPENI_PROJECTIONS_CSV)
    reports = pd.read_csv(world / "openi" / formats.OPENI_REPORTS_CSV)
    images = world / "openi" / formats.OPENI_IMAGE_DIR
    assert projections["filename"].map(lambda f: (images / f).is_file()).all()
    assert set(projections["uid"]) == set(reports["uid"])
    assert set(projections["projection"]) == {"Frontal", "Lateral"}


@pytest.mark.parametrize("name", formats.DEFAULT_FINDINGS[1:])  # cardiomegaly enlarges the heart instead
def test_each_finding_is_drawn_inside_its_truth_ellipse_at_low_contrast(name):
    rng = np.random.default_rng(7)
    spec = make_spec(rng, name, certain=True)
    chest = sample_chest(rng, 400, 352, cardiothoracic_ratio(rng, [spec]))
    layers = draw_frontal(chest, rng)
    before = layers.opacity.copy()
    findings = draw_findings(chest, layers, rng, [spec])
    change = np.abs(layers.opacity - before) * layers.lungs
    yy, xx = np.ogrid[:400, :352]
    inside = np.zeros((400, 352), dtype=bool)
    for f in findings:
        inside |= ((xx - f.x) / (1.5 * f.rx)) ** 2 + ((yy - f.y) / (1.5 * f.ry)) ** 2 <= 1
    assert change[inside].sum() > 0.85 * change.sum()
    if name == "Lung Lesion":
        assert 0.02 <= 2 * findings[0].rx / 352 <= 0.03
        assert 0.01 < change.max() * AIR_DARKENING < 0.1  # a few percent of the display range


def test_cardiomegaly_widens_the_heart_past_half_the_chest():
    rng = np.random.default_rng(1)
    normal = cardiothoracic_ratio(rng, [])
    enlarged = cardiothoracic_ratio(rng, [make_spec(rng, "Cardiomegaly")])
    assert normal < 0.5 < enlarged
    chest = sample_chest(rng, 400, 352, enlarged)
    blank = Layers(*[np.zeros((400, 352), np.float32)] * 6)
    (finding,) = draw_findings(chest, blank, rng, [make_spec(rng, "Cardiomegaly")])
    assert finding.rx / chest.half_width == pytest.approx(enlarged, rel=0.02)


def test_rendered_study_looks_like_a_chest_film(tmp_path):
    study = simulate_study(11)
    image, chest = study.frontal.pixels, study.frontal.chest
    lung = image[int(chest.apex_y + 0.5 * chest.height("right")), int(chest.point("right", 0.55, 0)[0])]
    mediastinum = image[int(chest.apex_y + 0.3 * chest.height("right")), int(chest.cx)]
    assert lung + 0.2 < mediastinum
    figure = Image.fromarray((image * 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(figure)
    for f in study.frontal.findings:
        draw.ellipse([f.x - f.rx, f.y - f.ry, f.x + f.rx, f.y + f.ry], outline=(255, 0, 0))
    figure.save(tmp_path / "phantom.png")
    assert Image.open(tmp_path / "phantom.png").size == (study.frontal.cols, study.frontal.rows)


def test_ensure_phantom_reuses_a_matching_folder_and_regenerates_otherwise(tmp_path):
    small = dict(eval_size=0, progress=False, workers=1)
    ensure_phantom(tmp_path, studies=2, seed=0, **small)
    stamp = (tmp_path / DONE_FILE).stat().st_mtime_ns
    ensure_phantom(tmp_path, studies=2, seed=0, **small)
    assert (tmp_path / DONE_FILE).stat().st_mtime_ns == stamp
    ensure_phantom(tmp_path, studies=3, seed=0, **small)
    assert json.loads((tmp_path / DONE_FILE).read_text())["summary"]["studies"] == 3
    assert len(pd.read_csv(tmp_path / "mimic-cxr" / formats.MIMIC_CHEXPERT_CSV)) == 3


def test_generator_refuses_to_overwrite_a_folder_it_did_not_write(tmp_path):
    (tmp_path / "mimic-cxr").mkdir()
    (tmp_path / "mimic-cxr" / "keep.txt").write_text("real data")
    with pytest.raises(FileExistsError):
        generate_phantom(tmp_path, studies=2, eval_size=0, progress=False, workers=1)
    assert (tmp_path / "mimic-cxr" / "keep.txt").read_text() == "real data"


def test_cli_writes_a_world_then_reuses_it(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--studies", "2", "--seed", "3", "--workers", "1", "--eval-size", "0",
            "--no-progress"]
    assert main(argv) is None
    assert json.loads(capsys.readouterr().out)["studies"] == 2
    stamp = (tmp_path / DONE_FILE).stat().st_mtime_ns
    main(argv)
    assert (tmp_path / DONE_FILE).stat().st_mtime_ns == stamp


def test_held_out_gaze_reads_test_studies_only_and_leaves_default_worlds_unchanged(world, tmp_path):
    """``test_gaze_fraction`` adds REFLACX readings of test-split frontals (for attention metrics) without
    moving any other draw, and the training expert datalist never sees them."""
    from eclip_monai.data import build_expert_datalist, build_mimic_datalist

    out = tmp_path / "held_out"
    summary = generate_phantom(out, seed=0, workers=1, split_fractions={"train": 0.6, "validate": 0.1, "test": 0.3},
                               test_gaze_fraction=1.0, **OPTIONS)
    assert summary["test_gaze_readings"] == summary["splits"]["test"] > 0
    meta = pd.read_csv(out / "reflacx" / formats.REFLACX_METADATA_CSV.format(phase=3))
    test_ids = set(meta.loc[meta["split"] == "test", "dicom_id"])
    assert len(test_ids) == summary["test_gaze_readings"]
    train = build_mimic_datalist(out / "mimic-cxr", splits=["train"])
    expert = build_expert_datalist(train, egd_root=out / "egd-cxr", reflacx_root=out / "reflacx",
                                   mimic_root=out / "mimic-cxr")
    assert expert and not {Path(item["image"]).stem for item in expert} & test_ids
    with pytest.raises(ValueError, match="split_fractions"):
        generate_phantom(tmp_path / "bad", split_fractions={"train": 0.9, "test": 0.1}, **OPTIONS)
    # the default world is byte-identical to the one written before these options existed
    again = tmp_path / "default"
    generate_phantom(again, seed=0, workers=1, split_fractions=None, test_gaze_fraction=0.0, **OPTIONS)
    for name in ("mimic-cxr/" + formats.MIMIC_SPLIT_CSV, "reflacx/" + formats.REFLACX_METADATA_CSV.format(phase=3)):
        assert (again / name).read_bytes() == (world / name).read_bytes()
