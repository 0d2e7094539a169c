"""Rule-based report labeler: synonyms, negation and uncertainty scope, report-level aggregation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eclip_monai.data import build_mimic_datalist
from eclip_monai.data.formats import CHEXPERT_LABELS, DEFAULT_FINDINGS
from eclip_monai.metrics.labeler import (
    ABSENT,
    CHEXPERT_CODING,
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    UNCERTAIN,
    ReportLabeler,
)

LABEL = ReportLabeler()


def found(text: str) -> dict[str, str]:
    return {finding: status for finding, status in LABEL(text).items()
            if status != ABSENT and finding != NO_FINDING}


@pytest.mark.parametrize("text, expected", [
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": POSITIVE}),
    ("The heart size is moderately enlarged.", {"Cardiomegaly": POSITIVE}),
    ("Small bilateral effusions.", {"Pleural Effusion": POSITIVE}),
    ("A 1 cm nodule in the right upper lobe.", {"Lung Lesion": POSITIVE}),
    ("Left hilar mass.", {"Lung Lesion": POSITIVE}),
    ("Collapse of the left lower lobe.", {"Atelectasis": POSITIVE}),
    ("Mild pulmonary vascular congestion.", {"Edema": POSITIVE}),
    ("Interstitial edema.", {"Edema": POSITIVE}),
    ("Right apical pneumothorax.", {"Pneumothorax": POSITIVE}),
    ("Right lower lobe consolidation.", {"Consolidation": POSITIVE}),
    ("Endotracheal tube ends 4 cm above the carina.", {"Support Devices": POSITIVE}),
    ("Small pericardial effusion.", {}),  # not a pleural effusion
])
def test_synonyms_map_to_their_finding(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("No focal consolidation, pleural effusion or pneumothorax.",
     {"Consolidation": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
    ("Moderate cardiomegaly without pulmonary edema.", {"Cardiomegaly": POSITIVE, "Edema": NEGATIVE}),
    ("Negative for pneumothorax. Free of consolidation.",
     {"Pneumothorax": NEGATIVE, "Consolidation": NEGATIVE}),
    ("The right pneumothorax has resolved.", {"Pneumothorax": NEGATIVE}),
    ("Effusion and pneumothorax have resolved.", {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
    ("Pneumothorax is not seen.", {"Pneumothorax": NEGATIVE}),
    ("The heart is not enlarged.", {"Cardiomegaly": NEGATIVE}),
    ("Heart size is normal.", {"Cardiomegaly": NEGATIVE}),
    # negation stays in its clause: a new clause after the comma, a finding before the trigger
    ("No pleural effusion, the heart is enlarged.", {"Pleural Effusion": NEGATIVE, "Cardiomegaly": POSITIVE}),
    ("Cardiomegaly is stable, effusion has resolved.",
     {"Cardiomegaly": POSITIVE, "Pleural Effusion": NEGATIVE}),
    ("No pneumothorax. Small left effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
    # "no change" is not a negation of what follows
    ("No change in the small right effusion.", {"Pleural Effusion": POSITIVE}),
])
def test_negation_scope(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Possible small nodule in the right upper lobe.", {"Lung Lesion": UNCERTAIN}),
    ("Left basal opacity, likely atelectasis.", {"Atelectasis": UNCERTAIN}),
    ("Atelectasis is likely.", {"Atelectasis": UNCERTAIN}),
    ("Consolidation cannot be excluded.", {"Consolidation": UNCERTAIN}),
    ("Opacity may represent consolidation or atelectasis.",
     {"Consolidation": UNCERTAIN, "Atelectasis": UNCERTAIN}),
    ("Questionable left pneumothorax.", {"Pneumothorax": UNCERTAIN}),
    ("The heart may be mildly enlarged.", {"Cardiomegaly": UNCERTAIN}),
])
def test_uncertainty_scope(text, expected):
    assert found(text) == expected


def test_report_level_positive_beats_uncertain_beats_negative():
    report = "FINDINGS: No right effusion. Possible left effusion. IMPRESSION: Small left pleural effusion."
    assert LABEL(report)["Pleural Effusion"] == POSITIVE
    assert LABEL("No right effusion. Possible left effusion.")["Pleural Effusion"] == UNCERTAIN
    assert LABEL("No effusion.")["Pleural Effusion"] == NEGATIVE


def test_no_finding_ignores_devices_and_negatives_but_not_uncertain_findings():
    assert LABEL("Lungs are clear. No effusion. Right PICC line in the SVC.")[NO_FINDING] == POSITIVE
    assert LABEL("Possible small nodule.")[NO_FINDING] == ABSENT
    assert LABEL("Mild cardiomegaly.")[NO_FINDING] == ABSENT


def test_label_matrix_uses_the_chexpert_coding():
    findings = ("Cardiomegaly", "Edema", "Pleural Effusion", "Atelectasis")
    matrix = LABEL.label_matrix(["Cardiomegaly. No edema. Possible effusion.", ""], findings)
    assert matrix.shape == (2, 4)
    np.testing.assert_array_equal(matrix[0], [1.0, 0.0, -1.0, np.nan])
    assert np.isnan(matrix[1]).all()


def test_labeler_agrees_with_the_phantom_truth_and_labels(tmp_path):
    """Phantom reports are written from the findings drawn (``phantom_truth.jsonl``), each sentence with the
    CheXpert label it asserts (the MIMIC-CXR-JPG CSV): the labeler must read both back from the text."""
    phantom = pytest.importorskip("eclip_monai.data.phantom")
    phantom.generate_phantom(tmp_path, studies=40, seed=0, workers=1, eval_size=0, progress=False)
    truth = {r["dicom_id"]: r for r in map(json.loads, (tmp_path / "phantom_truth.jsonl").open())}
    items = build_mimic_datalist(tmp_path / "mimic-cxr", splits=("train", "validate", "test"))
    same_presence = same_status = 0
    for item in items:
        labels = LABEL(item["report"])
        drawn = {f["name"] for f in truth[item["dicom_id"]]["findings"]}
        for finding in DEFAULT_FINDINGS:
            same_presence += (labels[finding] in (POSITIVE, UNCERTAIN)) == (finding in drawn)
            expected = item["labels"][CHEXPERT_LABELS.index(finding)]
            got = CHEXPERT_CODING[labels[finding]]
            same_status += bool(np.isnan(expected) and np.isnan(got)) or expected == got
    pairs = len(items) * len(DEFAULT_FINDINGS)
    assert len(items) >= 30 and any(truth[i["dicom_id"]]["findings"] for i in items)
    assert same_presence / pairs >= 0.98 and same_status / pairs >= 0.98
