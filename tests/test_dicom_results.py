"""Results as DICOM objects (SR of findings, Secondary Capture overlay) and gaze requests, without a server."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import torch

from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.gaze_search import gaze_search_precision, random_fixations
from eclip_monai.inference.dicom_results import (
    PRIVATE_SCHEME,
    findings_sr,
    overlay_secondary_capture,
    read_findings_sr,
    write_dicom,
)
from eclip_monai.inference.gaze_query import ROI_GRID, gaze_request, reading_pixels_per_degree
from eclip_monai.networks import build_eclip


@pytest.fixture(scope="module")
def source(phantom_dicom) -> pydicom.Dataset:
    return pydicom.dcmread(phantom_dicom)


def test_sr_holds_every_finding_coded_and_reads_back(source, tmp_path):
    probabilities = {"Cardiomegaly": 0.75, "Pleural Effusion": 0.125, "Hiatal Hernia": 0.5}
    path = write_dicom(findings_sr(source, probabilities), tmp_path / "sr.dcm")
    sr = pydicom.dcmread(path)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID and sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert read_findings_sr(sr) == probabilities
    codes = {item.ConceptNameCodeSequence[0].CodingSchemeDesignator
             for item in sr.ContentSequence[-1].ContentSequence[-1].ContentSequence if item.ValueType == "NUM"}
    assert codes == {"SCT", PRIVATE_SCHEME}  # SNOMED CT where known, the private scheme otherwise
    assert not list(tmp_path.glob("*.tmp"))  # written atomically


def test_secondary_capture_is_rgb_in_the_study_and_references_its_source(source, tmp_path):
    rgb = np.zeros((3, 40, 50))
    rgb[0, :, :25] = 1.0
    capture = pydicom.dcmread(write_dicom(overlay_secondary_capture(source, rgb), tmp_path / "sc.dcm"))
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.PhotometricInterpretation == "RGB"
    pixels = capture.pixel_array
    assert pixels.shape == (40, 50, 3) and pixels[0, 0, 0] == 255 and pixels[0, 30, 0] == 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) is not installed")
def test_both_objects_pass_dciodvfy_without_errors(source, tmp_path):
    for name, dataset in {"sr": findings_sr(source, {"Edema": 0.3}),
                          "sc": overlay_secondary_capture(source, np.full((8, 8, 3), 0.5))}.items():
        path = write_dicom(dataset, tmp_path / f"{name}.dcm")
        check = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
        assert not [line for line in check.stderr.splitlines() if line.startswith("Error")], check.stderr


@pytest.mark.parametrize("bad, match", [({}, "empty"), ({"Edema": 1.5}, "Edema"), ({"Edema": float("nan")}, "Edema")])
def test_bad_probabilities_are_refused(source, bad, match):
    with pytest.raises(ValueError, match=match):
        findings_sr(source, bad)


def test_overlay_rejects_non_colour_or_non_finite_pixels(source):
    with pytest.raises(ValueError, match="colour image"):
        overlay_secondary_capture(source, np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        overlay_secondary_capture(source, np.full((8, 8, 3), np.nan))


def test_gaze_request_reads_fixations_or_an_roi_and_names_bad_fields(phantom_dicom):
    assert gaze_request({}) is None
    rows = pydicom.dcmread(phantom_dicom, stop_before_pixels=True).Rows
    got = gaze_request({"fixations": [[10, 20, 0.5]]}, phantom_dicom)
    assert got["fixations"].shape == (1, 3) and got["pixels_per_degree"] == reading_pixels_per_degree(rows)
    roi = gaze_request({"roi": [10, 20, 50, 80], "pixels_per_degree": 12})
    assert roi["fixations"].shape == (ROI_GRID ** 2, 3) and roi["pixels_per_degree"] == 12
    assert roi["fixations"][:, 0].min() == 10 and roi["fixations"][:, 1].max() == 80
    for request, field in [({"fixations": [[1, 2]]}, "fixations"), ({"fixations": [], "roi": [1, 2, 3, 4]}, "fixations"),
                           ({"roi": [5, 5, 1, 9]}, "roi"), ({"fixations": [[1, 2, 3]], "pixels_per_degree": -1},
                                                            "pixels_per_degree")]:
        with pytest.raises(CXRDataError, match=field):
            gaze_request(request, phantom_dicom)


def test_random_fixations_keep_count_and_durations_inside_the_shown_region():
    fixations = np.array([[5.0, 5.0, 0.2], [9.0, 1.0, 1.3], [2.0, 7.0, 0.4]])
    moved = random_fixations(fixations, (100, 200), np.random.default_rng(0), shown_region=(10, 20, 30, 40))
    assert moved.shape == fixations.shape and (moved[:, 2] == fixations[:, 2]).all()
    assert ((moved[:, 0] >= 10) & (moved[:, 0] <= 30) & (moved[:, 1] >= 20) & (moved[:, 1] <= 40)).all()


def test_gaze_search_reports_three_paired_arms(tmp_path):
    from eclip_monai.data.phantom import ensure_phantom
    from eclip_monai.evaluation.gaze_attention import gaze_attention_datalist

    world = ensure_phantom(tmp_path / "world", studies=30, seed=1, workers=1, eval_size=2, progress=False,
                           test_gaze_fraction=1.0)
    queries = gaze_attention_datalist(world, splits=("test",), require="both")
    gallery = gaze_attention_datalist(world, splits=("train",), require="any")
    torch.manual_seed(0)
    network = build_eclip(model_name="eclip-tiny-cnn", image_size=64)
    result = gaze_search_precision(network, queries, gallery, 64, k=3, progress=False)
    assert result["queries"] == len([q for q in queries if q["findings"]]) > 0
    assert set(result["precision"]) == {"no_gaze", "gaze", "random_fixations"}
    assert all(0 <= v <= 1 for v in result["precision"].values()) and 0 < result["chance"] < 1
    row = result["contrasts"]["gaze - no_gaze"]
    assert row["mean_diff"] == pytest.approx(result["precision"]["gaze"] - result["precision"]["no_gaze"])
    with pytest.raises(ValueError, match="heatmap processor"):
        gaze_search_precision(build_eclip(model_name="eclip-tiny-cnn", image_size=64, experts=False), queries,
                              gallery, 64)
