"""Seed-level comparison of two models: flattening, direction of each metric, and the Welch verdict."""

import pytest

from eclip_monai.evaluation.compare import compare, flatten, format_table, lower_is_better, verdict_line


def test_flatten_keeps_numbers_and_drops_matrices():
    nested = {"rsna": {"zero_shot": {"accuracy": 0.5, "auroc": 0.7}, "class_similarity": [[1.0]], "n": 4},
              "flag": True}
    assert flatten(nested) == {"rsna/zero_shot/accuracy": 0.5, "rsna/zero_shot/auroc": 0.7, "rsna/n": 4.0}


def test_direction_of_metrics():
    assert lower_is_better("mimic_test/embedding_quality/modality_gap")
    assert lower_is_better("mimic_test/embedding_quality/uniformity_joint")
    assert not lower_is_better("mimic_test/retrieval/i2t_R@1")


def test_clear_gap_gives_a_verdict_for_the_better_model():
    a = [{"r1": 0.50, "modality_gap": 0.2}, {"r1": 0.52, "modality_gap": 0.21}, {"r1": 0.51, "modality_gap": 0.19}]
    b = [{"r1": 0.30, "modality_gap": 0.5}, {"r1": 0.31, "modality_gap": 0.52}, {"r1": 0.29, "modality_gap": 0.49}]
    rows = {r.metric: r for r in compare(a, b, ["r1", "modality_gap"], "eCLIP", "CLIP")}
    assert rows["r1"].verdict == "eCLIP better" and rows["r1"].p_value < 0.01
    assert rows["modality_gap"].verdict == "eCLIP better"  # smaller gap wins
    assert rows["r1"].a == pytest.approx((0.51, 0.00816), abs=1e-4)
    assert compare(b, a, ["modality_gap"], "eCLIP", "CLIP")[0].verdict == "CLIP better"


def test_overlapping_seeds_are_undecided_and_missing_metrics_skipped():
    a = [{"r1": 0.50}, {"r1": 0.30}, {"r1": 0.40}]
    b = [{"r1": 0.45}, {"r1": 0.35}, {"r1": 0.38}]
    rows = compare(a, b, ["r1", "absent"], "eCLIP", "CLIP")
    assert [r.metric for r in rows] == ["r1"]
    assert rows[0].verdict == "no clear difference"
    text = format_table(rows, "eCLIP", "CLIP", 3)
    assert "r1" in text and "0.400 ± 0.082" in text
    assert "no clear difference on 1 of 1" in verdict_line(rows, "eCLIP", "CLIP")
