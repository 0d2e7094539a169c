"""The hospital path, for real: Orthanc (DICOMweb) started by ``scripts/orthanc.py``, phantom radiographs stored
over STOW-RS, the MONAI Label app serving them from the PACS's DICOMweb URL, findings written back as a DICOM SR
and the reader's gaze overlay as a Secondary Capture, both read back from Orthanc; gaze-steered search.

Needs Debian's ``orthanc`` and ``orthanc-dicomweb`` (``.ci/run`` installs them); without them the module is
skipped, unless ``ECLIP_REQUIRE_PACS=1`` makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicomweb_client import DICOMwebClient

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.evaluation.embed import eval_image_transforms
from eclip_monai.inference.dicom_results import read_findings_sr
from eclip_monai.inference.gaze_query import gaze_request
from eclip_monai.networks import build_eclip, build_tokenizer
from eclip_monai.networks.checkpoint import load_weights
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from label_server import request, serve

ROOT = Path(__file__).resolve().parents[1]
ORTHANC = [sys.executable, str(ROOT / "scripts" / "orthanc.py")]
MODEL, SIZE, STUDIES = "eclip-tiny-cnn", 112, 4
HAVE_PACS = shutil.which("Orthanc") is not None or os.path.isfile("/usr/sbin/Orthanc")

if importlib.util.find_spec("monailabel") is None:
    pytestmark = pytest.mark.skip(reason="MONAI Label is not installed (requirements-label.txt)")
elif not HAVE_PACS and os.environ.get("ECLIP_REQUIRE_PACS") != "1":
    pytestmark = pytest.mark.skip(reason="Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)")


class PACS:
    def __init__(self, url: str, server: str, files: dict[str, Path], checkpoint: Path):
        self.url, self.server, self.files, self.checkpoint = url, server, files, checkpoint
        self.client = DICOMwebClient(url=url)

    def infer(self, model: str, image: str, params: dict | None = None) -> tuple[int, dict]:
        return request(self.server, f"/infer/{model}", params, image=image, output="json")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pacs")
    phantom = ensure_phantom(tmp / "phantom", studies=STUDIES, seed=3, workers=1, eval_size=2, progress=False)
    dicoms = sorted((phantom / "mimic-cxr" / "files").rglob("*.dcm"))
    torch.manual_seed(0)
    checkpoint = tmp / "model.pt"
    torch.save({"model": build_eclip(model_name=MODEL, image_size=SIZE).state_dict()}, checkpoint)
    started = subprocess.run([*ORTHANC, "start", "--dir", str(tmp / "orthanc")], capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    url = started.stdout.strip().splitlines()[-1]
    try:
        stored = subprocess.run([*ORTHANC, "store", "--url", url, str(phantom / "mimic-cxr" / "files")],
                                capture_output=True, text=True, timeout=120)
        assert stored.returncode == 0 and f"stored {len(dicoms)}" in stored.stdout, stored.stderr
        files = {str(pydicom.dcmread(d, stop_before_pixels=True).SeriesInstanceUID): d for d in dicoms}
        conf = {"checkpoint": checkpoint, "model_name": MODEL, "image_size": SIZE, "top_k": 2}
        with serve(tmp, url, conf, env={"MONAI_LABEL_DICOMWEB_CACHE_PATH": str(tmp / "cache")}) as server:
            yield PACS(url, server, files, checkpoint)
    finally:
        stopped = subprocess.run([*ORTHANC, "stop", "--dir", str(tmp / "orthanc")], capture_output=True,
                                 text=True, timeout=60)
        assert stopped.stdout.strip() == "stopped", stopped.stderr


def _classifier(checkpoint: Path) -> ZeroShotClassifier:
    network = build_eclip(model_name=MODEL, image_size=SIZE)
    return load_weights(ZeroShotClassifier(network, build_tokenizer(MODEL), DEFAULT_FINDINGS), checkpoint).eval()


def test_datastore_is_the_radiograph_series_of_the_pacs(pacs):
    status, info = request(pacs.server, "/info/")
    assert status == 200 and info["datastore"]["total"] == len(pacs.files)


def test_a_pacs_study_is_scored_as_the_same_file_in_process(pacs):
    series = sorted(pacs.files)[0]
    status, result = pacs.infer("eclip_findings", series)
    assert status == 200, result
    scores = torch.tensor([p["score"] for p in result["prediction"]])
    image = eval_image_transforms(SIZE)({"image": str(pacs.files[series])})["image"].as_tensor()[None]
    with torch.no_grad():
        expected = _classifier(pacs.checkpoint)(image)[0]
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_findings_go_back_as_an_sr_and_the_gaze_as_a_secondary_capture(pacs):
    series = sorted(pacs.files)[1]
    source = pydicom.dcmread(pacs.files[series])
    fixations = [[source.Columns * 0.3, source.Rows * 0.4, 0.5], [source.Columns * 0.6, source.Rows * 0.5, 1.0]]
    status, result = pacs.infer("eclip_findings", series, {"write_back": True, "fixations": fixations})
    assert status == 200, result
    stored = {s["modality"]: s for s in result["stored"]}
    assert set(stored) == {"SR", "OT"}
    scores = {p["label"]: p["score"] for p in result["prediction"]}
    back = {}
    for modality, entry in stored.items():
        found = pacs.client.search_for_instances(search_filters={"SeriesInstanceUID": entry["series"]})
        assert len(found) == 1
        back[modality] = pacs.client.retrieve_instance(source.StudyInstanceUID, entry["series"], entry["instance"])
        assert back[modality].StudyInstanceUID == source.StudyInstanceUID
        assert back[modality].PatientID == source.PatientID
    assert read_findings_sr(back["SR"]) == pytest.approx(scores, abs=1e-6)
    evidence = back["SR"].CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    capture = back["OT"]
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert capture.pixel_array.shape == (source.Rows, source.Columns, 3)
    rgb = capture.pixel_array.astype(float)
    column, row = int(fixations[1][0]), int(fixations[1][1])  # looked at longest: coloured, not grey
    assert np.ptp(rgb[row, column]) > 30 and np.ptp(rgb[5, 5]) < 3
    # the results are not offered as images
    assert request(pacs.server, "/info/")[1]["datastore"]["total"] == len(pacs.files)
    if shutil.which("dciodvfy"):
        for modality, dataset in back.items():
            path = Path(pacs.files[series]).parent / f"back_{modality}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            check = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
            errors = [line for line in check.stderr.splitlines() if line.startswith("Error")]
            assert not errors, (modality, errors)


def test_gaze_steers_the_similar_case_search(pacs):
    series = sorted(pacs.files)
    query = series[2]
    source = pydicom.dcmread(pacs.files[query], stop_before_pixels=True)
    fixations = [[source.Columns * 0.7, source.Rows * 0.6, 1.5]]
    status, result = pacs.infer("eclip_similar", query, {"fixations": fixations, "top_k": 3})
    assert status == 200 and result["gaze"] is True, result
    network = load_weights(build_eclip(model_name=MODEL, image_size=SIZE), pacs.checkpoint).eval()
    item = eval_image_transforms(SIZE, with_heatmap=True)(
        {"image": str(pacs.files[query]), **gaze_request({"fixations": fixations}, pacs.files[query])})
    others = [s for s in series if s != query]
    with torch.no_grad():
        steered = network.encode_expert_image(item["image"].as_tensor()[None], item["heatmap"].as_tensor()[None])
        plain = network.encode_image(item["image"].as_tensor()[None])
        candidates = torch.cat([network.encode_image(
            eval_image_transforms(SIZE)({"image": str(pacs.files[s])})["image"].as_tensor()[None]) for s in others])
    best = (candidates @ steered[0]).topk(3)
    assert [n["image"] for n in result["neighbours"]] == [others[r] for r in best.indices]
    torch.testing.assert_close(torch.tensor([n["score"] for n in result["neighbours"]]), best.values,
                               atol=1e-4, rtol=0)
    status, unsteered = pacs.infer("eclip_similar", query, {"top_k": 3})
    assert status == 200 and unsteered["gaze"] is False
    torch.testing.assert_close(torch.tensor([n["score"] for n in unsteered["neighbours"]]),
                               (candidates @ plain[0]).topk(3).values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("image, params, code, named", [
    ("1.2.3.4.5", {}, 404, "1.2.3.4.5"),
    ("../../etc/passwd", {}, 404, "../../etc/passwd"),
    (None, {"fixations": [[float("nan"), 3, 1]]}, 422, "fixations"),
    (None, {"roi": [10, 10, 5, 50]}, 422, "roi"),
])
def test_bad_requests_are_client_errors_naming_the_field(pacs, image, params, code, named):
    status, body = pacs.infer("eclip_similar", image or sorted(pacs.files)[0], params)
    assert status == code and named in body["detail"], body


def test_write_back_is_only_for_findings(pacs):
    status, body = pacs.infer("eclip_similar", sorted(pacs.files)[0], {"write_back": True})
    assert status == 422 and "write_back" in body["detail"]
