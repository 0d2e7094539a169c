"""Paired comparison of training arms over seeds: t-interval, paired p, Holm adjustment and the verdicts."""

import math
import warnings

import pytest
from scipy import stats

from eclip_monai.evaluation.paired import decide, holm_adjust, paired_difference, paired_table

A = [2.0, 4.0, 6.0, 8.0, 10.0]
B = [1.0, 2.0, 3.0, 4.0, 5.0]  # differences 1, 2, 3, 4, 5


def test_hand_computed_interval_and_t():
    d = paired_difference(A, B)
    sd = math.sqrt(2.5)
    half = 2.7764451 * sd / math.sqrt(5)  # t_{0.975, 4}
    assert d.n == 5 and d.diffs == (1.0, 2.0, 3.0, 4.0, 5.0)
    assert (d.mean_a, d.mean_b, d.mean_diff) == (6.0, 3.0, 3.0)
    assert d.sd_diff == pytest.approx(sd, abs=1e-6)
    assert d.t == pytest.approx(3 / (sd / math.sqrt(5)), abs=1e-6)
    assert (d.ci_low, d.ci_high) == pytest.approx((3 - half, 3 + half), abs=1e-6)
    assert d.as_dict()["diffs"] == [1.0, 2.0, 3.0, 4.0, 5.0] and d.as_dict()["p"] == d.p


def test_p_value_is_scipys_paired_t_test():
    a, b = [0.61, 0.58, 0.66, 0.70, 0.59], [0.57, 0.58, 0.60, 0.69, 0.55]
    assert paired_difference(a, b).p == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert paired_difference(A, B).p == pytest.approx(stats.ttest_rel(A, B).pvalue, rel=1e-12)


def test_wider_interval_at_higher_confidence():
    d95, d99 = paired_difference(A, B), paired_difference(A, B, confidence=0.99)
    assert d99.ci_low < d95.ci_low < d95.ci_high < d99.ci_high and d99.p == d95.p


def test_pairing_finds_a_consistent_gain_that_welch_misses():
    # Seeds differ a lot from each other, but arm a beats arm b by about 0.01 on every seed.
    a = [0.50, 0.60, 0.70, 0.80, 0.90]
    b = [0.49, 0.585, 0.69, 0.79, 0.895]
    assert stats.ttest_ind(a, b, equal_var=False).pvalue > 0.5  # unpaired (Welch) sees only noise
    paired = paired_difference(a, b)
    assert paired.p < 0.01 and decide(paired) == "better"


def test_holm_textbook_example_in_input_order():
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-12)


def test_holm_is_capped_at_one_and_monotone_in_p():
    adjusted = holm_adjust([0.5, 0.9, 0.001, 0.4])
    assert max(adjusted) == 1.0
    order = sorted(range(4), key=[0.5, 0.9, 0.001, 0.4].__getitem__)
    assert [adjusted[i] for i in order] == sorted(adjusted)


def test_holm_keeps_nan_out_of_the_family():
    adjusted = holm_adjust([0.01, math.nan, 0.04])
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2]] == pytest.approx([0.02, 0.04])  # family of two, not three
    assert holm_adjust([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.2, 1.5])


def test_one_seed_gives_nan_interval_and_p_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = paired_difference([0.7], [0.5])
    assert d.n == 1 and d.mean_diff == pytest.approx(0.2)
    assert all(math.isnan(x) for x in (d.sd_diff, d.ci_low, d.ci_high, d.t, d.p))
    assert decide(d) == "no difference shown"


def test_identical_differences_collapse_the_interval_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gain = paired_difference([0.3, 0.5, 0.7], [0.2, 0.4, 0.6])
        same = paired_difference([0.3, 0.5, 0.7], [0.3, 0.5, 0.7])
        near = paired_difference([0.3, 0.5, 0.7], [0.2, 0.4, 0.6 - 1e-15])  # equal up to rounding
    assert gain.sd_diff == 0 and gain.ci_low == gain.ci_high == gain.mean_diff and gain.p == 0.0
    assert gain.t == math.inf and decide(gain) == "better"
    assert (same.ci_low, same.ci_high, same.t, same.p) == (0.0, 0.0, 0.0, 1.0)
    assert decide(same) == "no difference shown"
    assert near.p < 1e-6 and decide(near) == "better"


def test_decision_rule_on_the_three_sides_of_zero():
    up, down = paired_difference(A, B), paired_difference(B, A)
    straddles = paired_difference([1.0, 2.0, 3.0], [2.0, 1.0, 3.5])
    assert (decide(up), decide(down), decide(straddles)) == ("better", "worse", "no difference shown")
    assert (decide(up, higher_is_better=False), decide(down, higher_is_better=False)) == ("worse", "better")


def test_mismatched_lengths_and_non_finite_values_are_refused():
    with pytest.raises(ValueError, match="a has 3 seed values and b has 2"):
        paired_difference([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(ValueError, match=r"b\[1\] is nan"):
        paired_difference([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ValueError, match=r"a\[0\] is inf"):
        paired_difference([math.inf, 2.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="at least one seed"):
        paired_difference([], [])


def test_table_adjusts_secondaries_within_each_contrast_but_not_the_primary():
    zeros = [0.0] * 5
    values = {
        "eclip": {"r1": A, "s1": [0.0, 1.0, 2.0, 3.0, 4.0], "s2": [1.0, -1.0, 2.0, -2.0, 0.0],
                  "modality_gap": B},
        "clip": {"r1": B, "s1": zeros, "s2": zeros, "modality_gap": A},
    }
    rows = paired_table(values, [("eclip", "clip")], ["r1"], ["s1", "s2", "modality_gap"])
    by_metric = {r["metric"]: r for r in rows}
    assert [r["metric"] for r in rows] == ["r1", "s1", "s2", "modality_gap"]
    assert all(r["contrast"] == "eclip - clip" for r in rows)
    primary = by_metric["r1"]
    assert primary["p_holm"] == primary["p"] and primary["verdict"] == "better"
    assert primary["mean_diff"] == 3.0 and primary["diffs"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    family = [by_metric[m]["p"] for m in ("s1", "s2", "modality_gap")]
    assert [by_metric[m]["p_holm"] for m in ("s1", "s2", "modality_gap")] == holm_adjust(family)
    s1 = by_metric["s1"]  # its own interval excludes 0, but not after Holm over three secondaries
    assert s1["p"] < 0.05 < s1["p_holm"] and s1["ci_low"] > 0 and s1["verdict"] == "no difference shown"
    assert by_metric["s2"]["verdict"] == "no difference shown"
    assert by_metric["modality_gap"]["verdict"] == "better"  # a smaller modality gap is better


def test_table_names_the_missing_arm_or_metric():
    values = {"eclip": {"r1": A}, "clip": {"r1": B[:4]}}
    with pytest.raises(ValueError, match="no values for arm 'expert'"):
        paired_table(values, [("expert", "clip")], ["r1"])
    with pytest.raises(ValueError, match="arm 'clip' has no metric 'r5'"):
        paired_table({"eclip": {"r5": A}, "clip": {"r1": B}}, [("eclip", "clip")], ["r5"])
    mismatch = "contrast eclip - clip, metric 'r1': a has 5 seed values and b has 4"
    with pytest.raises(ValueError, match=mismatch):
        paired_table(values, [("eclip", "clip")], ["r1"])
