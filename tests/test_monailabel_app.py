"""The eCLIP MONAI Label app, served for real: ``monailabel start_server`` on loopback over phantom DICOMs,
answers must equal the zero-shot classifier run in-process with the same weights.

The same server then takes the fast slice of ``scripts/load_test.py`` (load and attack): two clients, 80
requests, valid and bad mixed; hostile uploads from the corpus; paths given as image ids (never opened) and
malformed requests (client errors, not 500s). The full run is ``python scripts/load_test.py`` (8 clients,
1,000 requests)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.data.phantom import ensure_phantom
from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.embed import eval_image_transforms
from eclip_monai.networks.checkpoint import load_weights
from eclip_monai.networks import build_eclip
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.rag.index import ReportIndex
from eclip_monai.networks import build_tokenizer
from label_server import APP, request, serve

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monailabel") is None,
    reason="MONAI Label is not installed (pip install --no-deps -r requirements-label.txt)")

MODEL, SIZE, STUDIES = "eclip-tiny-cnn", 112, 5


def _load_app_module(name: str):
    """An app module by file (its ``lib`` package is only on sys.path inside the server)."""
    qualified = f"eclip_label_{name}"
    if qualified not in sys.modules:
        spec = importlib.util.spec_from_file_location(qualified, APP / "lib" / f"{name}.py")
        sys.modules[qualified] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
        spec.loader.exec_module(sys.modules[qualified])
    return sys.modules[qualified]


def _reference(checkpoint: Path) -> ZeroShotClassifier:
    network = build_eclip(model_name=MODEL, image_size=SIZE)
    classifier = ZeroShotClassifier(network, build_tokenizer(MODEL), DEFAULT_FINDINGS)
    return load_weights(classifier, checkpoint).eval()


class Server:
    def __init__(self, url: str, studies: Path, reference: ZeroShotClassifier, index: ReportIndex, work: Path,
                 outside: Path):
        self.url, self.studies, self.reference, self.index = url, studies, reference, index
        self.work, self.outside = work, outside

    def request(self, path: str, params: dict | None = None, **query) -> tuple[int, dict]:
        return request(self.url, path, params, **query)

    def image(self, image_id: str) -> torch.Tensor:
        item = eval_image_transforms(SIZE)({"image": str(self.studies / f"{image_id}.dcm")})
        return item["image"].as_tensor()[None]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monailabel")
    phantom = ensure_phantom(tmp / "phantom", studies=STUDIES, seed=0, workers=1, eval_size=2, progress=False)
    studies = tmp / "studies"  # a flat folder, as MONAI Label's local datastore expects
    studies.mkdir()
    dicoms = sorted((phantom / "mimic-cxr" / "files").rglob("*.dcm"))
    for dicom in dicoms:
        shutil.copy(dicom, studies / dicom.name)
    torch.manual_seed(0)
    network = build_eclip(model_name=MODEL, image_size=SIZE)
    checkpoint = tmp / "model.pt"
    torch.save({"model": network.state_dict()}, checkpoint)
    reports = [d.parent.with_suffix(".txt").read_text() for d in dicoms]
    index = ReportIndex.load_or_build(tmp / "index", network, build_tokenizer(MODEL), reports,
                                      checkpoint_path=checkpoint, ids=[d.parent.name for d in dicoms])
    conf = {"checkpoint": checkpoint, "model_name": MODEL, "image_size": SIZE, "top_k": 3,
            "report_index": tmp / "index"}
    (tmp / "outside").mkdir()  # a valid DICOM on the server that is not in the datastore
    outside = shutil.copy(dicoms[0], tmp / "outside" / "not_in_the_datastore.dcm")
    with serve(tmp, str(studies), conf) as url:
        yield Server(url, studies, _reference(checkpoint), index, tmp, Path(outside))


def _ids(server: Server) -> list[str]:
    return sorted(p.stem for p in server.studies.glob("*.dcm"))


def test_info_lists_the_two_models_and_the_dicom_studies(server):
    status, info = server.request("/info/")
    assert status == 200
    assert info["models"]["eclip_findings"]["type"] == "classification"
    assert info["models"]["eclip_findings"]["labels"] == list(DEFAULT_FINDINGS)
    assert "eclip_similar" in info["models"]
    assert info["datastore"]["total"] == STUDIES


def test_findings_are_the_in_process_classifier_probabilities(server):
    for image_id in _ids(server)[:2]:
        status, result = server.request("/infer/eclip_findings", image=image_id, output="json")
        assert status == 200, result
        prediction = result["prediction"]
        assert [p["label"] for p in prediction] == list(DEFAULT_FINDINGS)
        scores = torch.tensor([p["score"] for p in prediction])
        assert ((scores >= 0) & (scores <= 1)).all()
        with torch.no_grad():
            expected = server.reference(server.image(image_id))[0]
        torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)


def test_similar_returns_the_k_nearest_other_studies_and_reports(server):
    ids = _ids(server)
    query = ids[0]
    status, result = server.request("/infer/eclip_similar", params={"top_k": 2}, image=query, output="json")
    assert status == 200, result
    with torch.no_grad():
        embeddings = {i: server.reference.embed(server.image(i))[0] for i in ids}
    others = [i for i in ids if i != query]
    cosine = torch.stack([embeddings[i] for i in others]) @ embeddings[query]
    best = cosine.topk(2)
    assert [n["image"] for n in result["neighbours"]] == [others[r] for r in best.indices]
    torch.testing.assert_close(torch.tensor([n["score"] for n in result["neighbours"]]), best.values,
                               atol=1e-4, rtol=0)
    scores, rows = server.index.search(embeddings[query][None], 2)
    assert [r["id"] for r in result["reports"]] == [server.index.ids[r] for r in rows[0]]
    torch.testing.assert_close(torch.tensor([r["score"] for r in result["reports"]]),
                               torch.from_numpy(scores[0]), atol=1e-4, rtol=0)
    _, default = server.request("/infer/eclip_similar", image=query, output="json")
    assert len(default["neighbours"]) == 3  # --conf top_k 3


def test_unknown_image_and_bad_top_k_are_client_errors_naming_them(server):
    status, body = server.request("/infer/eclip_findings", image="no-such-study", output="json")
    assert status == 404 and "no-such-study" in body["detail"]
    status, body = server.request("/infer/eclip_similar", params={"top_k": "many"}, image=_ids(server)[0],
                                  output="json")
    assert status == 422 and "top_k" in body["detail"]


def test_settings_name_the_conf_key_at_fault(tmp_path):
    network = _load_app_module("network")
    with pytest.raises(CXRDataError, match="checkpoint"):
        network.AppSettings.from_conf({})
    with pytest.raises(CXRDataError, match=str(tmp_path / "missing.pt")):
        network.AppSettings.from_conf({"checkpoint": str(tmp_path / "missing.pt")})
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    with pytest.raises(CXRDataError, match="image_size"):
        network.AppSettings.from_conf({"checkpoint": str(foreign), "image_size": "big"})
    with pytest.raises(CXRDataError, match="foreign.pt: model"):
        network.checkpoint_has_processor(str(foreign))


def test_report_index_of_other_weights_is_refused(tmp_path):
    network = _load_app_module("network")
    checkpoint, other = tmp_path / "model.pt", tmp_path / "other.pt"
    torch.manual_seed(0)
    eclip = build_eclip(model_name=MODEL, image_size=SIZE, experts=False)
    torch.save({"model": eclip.state_dict()}, checkpoint)
    torch.save({"model": {k: v + 1 for k, v in eclip.state_dict().items()}}, other)
    ReportIndex.load_or_build(tmp_path / "index", eclip, build_tokenizer(MODEL), ["no effusion", "effusion"],
                              checkpoint_path=other)
    settings = network.AppSettings.from_conf({"checkpoint": str(checkpoint),
                                              "report_index": str(tmp_path / "index")})
    assert network.checkpoint_has_processor(settings.checkpoint) is False  # a CLIP baseline checkpoint
    with pytest.raises(CXRDataError, match="checkpoint_sha256"):
        network.load_report_index(settings, dim=256)


SEG_ROUND_TRIP = """
import numpy as np, pydicom, pydicom_seg, SimpleITK as sitk
from pydicom.uid import SegmentationStorage
source = pydicom.dcmread({path!r})
# DICOM SEG needs volume geometry, which a projection radiograph lacks: give it a one-slice volume's
source.ImagePositionPatient, source.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
source.PixelSpacing, source.SliceThickness = [0.2, 0.2], 1
source.FrameOfReferenceUID = pydicom.uid.generate_uid()
code = {{"CodeValue": "80891009", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Heart"}}
segment = {{"labelID": 1, "SegmentDescription": "heart", "SegmentAlgorithmType": "AUTOMATIC",
           "SegmentAlgorithmName": "test", "SegmentedPropertyCategoryCodeSequence": code,
           "SegmentedPropertyTypeCodeSequence": code}}
template = pydicom_seg.template.from_dcmqi_metainfo({{
    "ContentCreatorName": "test", "SeriesDescription": "seg", "SeriesNumber": "300", "InstanceNumber": "1",
    "segmentAttributes": [[segment]]}})
mask = np.zeros((1, source.Rows, source.Columns), np.uint8)
mask[0, 20:60, 30:90] = 1
seg = pydicom_seg.MultiClassWriter(template=template).write(sitk.GetImageFromArray(mask), [source])
assert seg.SOPClassUID == SegmentationStorage
back = pydicom_seg.MultiClassReader().read(seg)
assert int(back.data.sum()) == int(mask.sum()), (back.data.sum(), mask.sum())
print("ok")
"""


def test_compat_hook_lets_pydicom_seg_write_dicom_seg_under_pydicom3(tmp_path):
    """MONAI Label imports pydicom_seg, which imports a module pydicom 3 removed; the hook brings it back."""
    dicom = sorted((ensure_phantom(tmp_path / "phantom", studies=1, seed=1, workers=1, eval_size=1,
                                   progress=False) / "mimic-cxr" / "files").rglob("*.dcm"))[0]
    script = SEG_ROUND_TRIP.format(path=str(dicom))
    bare = subprocess.run([sys.executable, "-c", "import pydicom_seg"], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert bare.returncode != 0 and "_storage_sopclass_uids" in bare.stderr
    hooked = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(APP / "compat")))
    assert hooked.returncode == 0 and hooked.stdout.strip() == "ok", hooked.stderr


# malformed requests MONAI Label itself would answer 500, and paths on the server given as the image
MALFORMED = ("malformed_json", "params_not_object", "unknown_model", "no_image")
PATH_KINDS = ("path_id", "path_id_outside_dicom", "path_in_params")


@pytest.fixture(scope="module")
def load_test():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("load_test")
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def attacked(load_test, server):
    """The app's server as ``scripts/load_test.py`` addresses one."""
    attacked = load_test.Server(server.url, load_test._server_pid(server.url.rsplit(":", 1)[1]), _ids(server),
                                (server.studies / f"{_ids(server)[0]}.dcm").read_bytes(), str(server.outside),
                                load_test.hostile_uploads(server.work, seed=0))
    load_test.warm_up(attacked)
    return attacked


def _fresh(load_test, attacked, request):
    """One request on its own connection (after a 500 the server drops the keep-alive connection)."""
    import requests

    with requests.Session() as session:
        return load_test.send(session, attacked.url, request)


def test_two_clients_mixing_valid_and_bad_requests_get_200_and_4xx(load_test, attacked):
    kinds = [k for k in [*load_test.VALID_WEIGHTS, *load_test.BAD_WEIGHTS]  # 96 MiB uploads: the full run
             if k not in MALFORMED + PATH_KINDS + ("oversized_upload",)]
    mix = load_test.build_requests(attacked, 80, seed=0, kinds=kinds)
    answers, rss = load_test.run_load(attacked, mix, clients=2)
    assert len(answers) == 80 and {a.kind for a in answers} == set(kinds)
    assert [f"{a.kind}: {a.status} {a.detail}" for a in answers if not a.passed] == []
    assert sum(a.kind in load_test.VALID_WEIGHTS for a in answers) > 40
    assert rss["alive_after"]


def test_hostile_uploads_are_client_errors_and_the_server_keeps_answering(load_test, attacked):
    assert len(attacked.hostile) >= 8
    for name, content in attacked.hostile:
        answer = _fresh(load_test, attacked, load_test.Request("hostile_upload", "4xx", upload=(name, content)))
        assert 400 <= answer.status < 500, (name, answer)
    valid = load_test.Request("findings_upload", "200", upload=("ok.dcm", attacked.upload))
    assert _fresh(load_test, attacked, valid).status == 200


def test_a_path_given_as_image_id_is_never_opened(load_test, attacked):
    import numpy as np

    rng = np.random.default_rng(0)
    answers = [_fresh(load_test, attacked, load_test._request(kind, attacked, rng)) for kind in PATH_KINDS * 3]
    assert [(a.kind, a.status, a.detail) for a in answers if not a.passed] == []


def test_malformed_params_an_unknown_model_and_no_image_are_client_errors(load_test, attacked):
    import numpy as np

    rng = np.random.default_rng(0)
    answers = [_fresh(load_test, attacked, load_test._request(kind, attacked, rng))
               for kind in MALFORMED]
    assert [(a.kind, a.status) for a in answers if not 400 <= a.status < 500] == []
