"""Report generation end to end: retrieval beats random reports, and the bundle workflow writes, reuses and
resumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch import nn

from eclip_monai.data.formats import (
    CHEXPERT_LABELS,
    MIMIC_CHEXPERT_CSV,
    MIMIC_METADATA_COLUMNS,
    MIMIC_METADATA_CSV,
    MIMIC_SPLIT_CSV,
    DEFAULT_FINDINGS,
    mimic_dicom_path,
    mimic_report_path,
)
import eclip_monai.rag.index as index_module
from eclip_monai.errors import CXRDataError
from eclip_monai.metrics.labeler import ReportLabeler
from eclip_monai.metrics.report_metrics import report_metrics
from eclip_monai.rag import RandomReportBackend, ReportIndex, ReportRetriever, RetrievalOnlyBackend
from eclip_monai.rag.generate import generate_reports

STATED = {
    "Cardiomegaly": ["Moderate cardiomegaly.", "The heart is mildly enlarged."],
    "Pleural Effusion": ["Small left pleural effusion.", "Bilateral pleural effusions."],
    "Pneumothorax": ["Small right apical pneumothorax.", "Left pneumothorax."],
    "Lung Lesion": ["8 mm nodule in the right upper lung.", "Left lower lung nodule."],
    "Consolidation": ["Right lower lung consolidation.", "Patchy left upper lung consolidation."],
    "Atelectasis": ["Left basilar atelectasis.", "Plate-like atelectasis at the right base."],
    "Edema": ["Mild pulmonary edema.", "Moderate interstitial pulmonary edema."],
}
NEGATED = {"Cardiomegaly": "Heart size is normal.", "Pleural Effusion": "No pleural effusion.",
           "Pneumothorax": "No pneumothorax.", "Edema": "No pulmonary edema."}


ROOT = Path(__file__).resolve().parents[1]


def phantom_like_reports(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Reports in varied wording with negations, and the (n, 7) findings they were written from."""
    rng = np.random.default_rng(seed)
    present = rng.random((n, len(DEFAULT_FINDINGS))) < 0.25
    reports = []
    for row in present:
        sentences = [str(rng.choice(STATED[f])) for f, on in zip(DEFAULT_FINDINGS, row) if on]
        sentences += [NEGATED[f] for f, on in zip(DEFAULT_FINDINGS, row) if not on and f in NEGATED
                      and rng.random() < 0.5]
        reports.append(" ".join(sentences) or "No acute cardiopulmonary process.")
    return reports, present


class FindingNet(nn.Module):
    """A network whose embeddings *are* the findings: the text tower labels the report, the image tower reads
    the true findings (plus noise), so retrieval quality is known to be good."""

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(tokens + 0.05, dim=-1)


def label_tokenizer(texts) -> torch.Tensor:
    codes = ReportLabeler().label_matrix(texts, DEFAULT_FINDINGS)
    return torch.from_numpy((codes == 1.0).astype(np.float32))


def test_retrieval_baseline_scores_higher_finding_f1_than_random_reports():
    corpus, _ = phantom_like_reports(300, seed=0)
    references, findings = phantom_like_reports(60, seed=1)
    index = ReportIndex.build(FindingNet(), label_tokenizer, corpus)
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.from_numpy(findings.astype(np.float32)) + 0.05
                         + 0.02 * torch.randn(findings.shape, generator=generator), dim=-1)
    items = [{"dicom_id": f"d{i}", "study_id": i, "report": r} for i, r in enumerate(references)]
    retriever = ReportRetriever(index, k=3)

    nearest = generate_reports(items, images, retriever, RetrievalOnlyBackend(), None)
    random_ = generate_reports(items, images, retriever, RandomReportBackend(index.reports, seed=0), None)
    scores = {name: report_metrics([r["generated"] for r in records], references)["finding_micro_f1"]
              for name, records in (("nearest", nearest), ("random", random_))}
    print(f"finding micro-F1: nearest report {scores['nearest']:.3f}, random report {scores['random']:.3f}")
    assert scores["nearest"] > 0.9 and scores["nearest"] > scores["random"] + 0.4
    first = nearest[0]
    assert first["retrieved_ids"] and first["generated"] == index.reports[int(first["retrieved_ids"][0])]


# --- the CLI on a tiny MIMIC-CXR tree with real DICOMs ---------------------------------------------------

def write_dicom(path, seed: int, size: int = 64) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", generate_uid()
    ds.Modality, ds.ViewPosition = "DX", "PA"
    pixels = np.random.default_rng(seed).integers(0, 4096, (size, size)).astype(np.uint16)
    ds.set_pixel_data(pixels, "MONOCHROME2", 12)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_mimic_tree(root, train: int = 8, test: int = 3, corrupt_test: int = 1):
    reports, _ = phantom_like_reports(train + test, seed=2)
    rows = []
    for i, report in enumerate(reports):
        subject, study, dicom = 10000000 + i, 50000000 + i, f"dcm{i:03d}"
        split = "train" if i < train else "test"
        rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "split": split})
        (root / mimic_report_path(subject, study)).parent.mkdir(parents=True, exist_ok=True)
        report_file = root / mimic_report_path(subject, study)
        report_file.write_text(f"FINDINGS: {report}\n\nIMPRESSION: See above.\n")
        if i >= train + test - corrupt_test:
            (root / mimic_dicom_path(subject, study, dicom)).parent.mkdir(parents=True, exist_ok=True)
            (root / mimic_dicom_path(subject, study, dicom)).write_bytes(b"not a dicom")
        else:
            write_dicom(root / mimic_dicom_path(subject, study, dicom), seed=i)
    meta = pd.DataFrame([{c: r.get(c, "PA" if c == "ViewPosition" else 0) for c in MIMIC_METADATA_COLUMNS}
                         for r in rows])
    meta.to_csv(root / MIMIC_METADATA_CSV, index=False)
    pd.DataFrame(rows).to_csv(root / MIMIC_SPLIT_CSV, index=False)
    pd.DataFrame([{"subject_id": r["subject_id"], "study_id": r["study_id"], **dict.fromkeys(CHEXPERT_LABELS)}
                  for r in rows]).to_csv(root / MIMIC_CHEXPERT_CSV, index=False)
    return reports[:train]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """``(dataset_dir, train report texts)``."""
    root = tmp_path_factory.mktemp("data")
    return root, write_mimic_tree(root / "mimic-cxr")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two eCLIP-tiny checkpoints with different random weights, saved with their heatmap processors."""
    from eclip_monai.networks import build_eclip

    directory = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = directory / f"eclip{seed}.pt"
        torch.save(build_eclip(model_name="eclip-tiny", image_size=64, experts=True).state_dict(), path)
        paths.append(path)
    return paths


def generate(dataset, out, checkpoints, **overrides):
    """``bundle/configs/generate_reports.json`` merged after ``train.json``, run in-process as
    ``python -m monai.bundle run`` runs it."""
    from monai.bundle import ConfigWorkflow

    configs = [str(ROOT / "bundle" / "configs" / name) for name in ("train.json", "generate_reports.json")]
    settings = {"dataset_dir": str(dataset[0]), "generate_phantom": False, "model_name": "eclip-tiny",
                "image_size": 64, "device": "$torch.device('cpu')", "batch_size": 4, "num_workers": 0,
                "reports_dir": str(out), "report_checkpoints": {k: str(v) for k, v in checkpoints.items()},
                "retrieval#k": 3, "retrieval#diverse": False, **overrides}
    workflow = ConfigWorkflow(configs, logging_file=False, **settings)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_workflow_writes_generations_csv_and_metrics_skipping_an_unreadable_image(dataset, checkpoints, tmp_path):
    generate(dataset, tmp_path, {"run": checkpoints[0]})
    records = read_jsonl(tmp_path / "generated.jsonl")
    assert [r["dicom_id"] for r in records] == ["dcm008", "dcm009"]  # dcm010 is not a DICOM
    train_reports = {json.loads(line)["report"] for line in (tmp_path / "index" / "reports.jsonl").open()}
    assert all(r["generated"] in train_reports and len(r["retrieved_ids"]) == 3 for r in records)
    table = pd.read_csv(tmp_path / "generated.csv")
    assert list(table.columns) == ["dicom_id", "study_id", "reference", "generated", "retrieved_ids"]
    assert table["retrieved_ids"].str.count(";").tolist() == [2, 2]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    distinct = {f"{r} See above." for r in dataset[1]}  # FINDINGS + IMPRESSION, one index row per text
    assert metrics["n"] == 2 and metrics["images_skipped"] == 1 and metrics["index_size"] == len(distinct)
    assert train_reports == distinct
    assert 0.0 <= metrics["bleu4"] <= 1.0 and 0.0 <= metrics["rougeL"] <= 1.0
    assert 0.0 <= metrics["finding_micro_f1"] <= 1.0
    assert metrics["checkpoint_sha256"] and metrics["backend"] == "retrieval"


def test_workflow_reuses_the_index_and_resumes_without_regenerating(dataset, checkpoints, tmp_path, monkeypatch):
    generate(dataset, tmp_path, {"run": checkpoints[0]})
    jsonl = tmp_path / "generated.jsonl"
    first = read_jsonl(jsonl)
    # as if the run had been killed while writing the second record
    jsonl.write_text(json.dumps(first[0]) + "\n" + json.dumps(first[1])[:25])
    encoded, generated = [], []
    original_embed, original_generate = index_module.embed_reports, RetrievalOnlyBackend.generate
    monkeypatch.setattr(index_module, "embed_reports",
                        lambda *a, **k: encoded.append(1) or original_embed(*a, **k))
    monkeypatch.setattr(RetrievalOnlyBackend, "generate",
                        lambda self, *a: generated.append(1) or original_generate(self, *a))
    generate(dataset, tmp_path, {"run": checkpoints[0]}, resume_reports=True)
    assert not encoded and len(generated) == 1 and read_jsonl(jsonl) == first
    generate(dataset, tmp_path, {"run": checkpoints[1]})  # another checkpoint: the index is rebuilt
    assert encoded == [1]


def test_workflow_compares_two_checkpoints_side_by_side(dataset, checkpoints, tmp_path):
    generate(dataset, tmp_path, {"eclip": checkpoints[0], "clip": checkpoints[1]}, **{"llm#backend": "random"})
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["name"].tolist() == ["eclip", "clip"]
    for name in ("eclip", "clip"):
        assert json.loads((tmp_path / name / "metrics.json").read_text())["backend"] == "random"


def test_workflow_with_a_local_transformers_llm(dataset, checkpoints, tmp_path):
    from test_rag_llm_hf import save_tiny_llm

    model_dir = save_tiny_llm(tmp_path / "llm")
    llm = {"backend": "hf", "model_dir": str(model_dir), "max_new_tokens": 6, "device": "cpu"}
    generate(dataset, tmp_path / "out", {"run": checkpoints[0]}, llm=llm, **{"prompt#few_shot": 1})
    records = read_jsonl(tmp_path / "out" / "generated.jsonl")
    assert len(records) == 2 and all(isinstance(r["generated"], str) and r["generated"] for r in records)
