"""Statistics of a pre-registered paired comparison of training arms over seeds.

Every seed trains each arm from the same initialisation and in the same data order, so the seed's own luck
is shared by the arms and cancels in the per-seed difference ``a - b``. The analysis is therefore on those
differences (paired t-test and t-interval with n - 1 degrees of freedom), not on the two clouds of seeds
(an unpaired test), which would count the seed-to-seed spread as noise.

What was fixed before the runs: one primary metric per contrast, judged on its own 95 % interval
(:func:`decide`), and a family of secondary metrics per contrast whose p-values are Holm-adjusted
(:func:`holm_adjust`) before they may claim anything. :func:`paired_table` applies both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import stats

# Metrics where smaller is better; every other metric is better when larger.
LOWER_IS_BETTER = ("modality_gap", "alignment", "uniformity", "loss")


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


@dataclass(frozen=True)
class PairedDifference:
    """Arm ``a`` minus arm ``b`` over ``n`` seeds; ``diffs`` holds the per-seed differences in seed order."""

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    confidence: float
    diffs: tuple[float, ...]

    def as_dict(self) -> dict:
        """Every field by name, ``diffs`` as a list so the row can go straight into JSON."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["diffs"] = list(self.diffs)
        return row


def _finite_values(values: Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one number per seed, got an array of shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise ValueError(f"{name}[{bad[0]}] is {array[bad[0]]}: every seed needs a finite value in every arm "
                         f"(non-finite at seed positions {bad.tolist()})")
    return array


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDifference:
    """Paired t-test and t-interval for the mean of ``a - b``; ``a[i]`` and ``b[i]`` come from the same seed.

    Edge cases are defined rather than left to warnings:

    - ``n == 1``: the mean difference is reported, but one seed says nothing about noise, so ``sd_diff``,
      ``t``, ``p`` and the interval are NaN (and :func:`decide` says "no difference shown").
    - every difference identical (``sd_diff == 0``, ``n >= 2``): the interval collapses to the point
      ``mean_diff``; if that is 0, ``t = 0`` and ``p = 1``, otherwise ``t = ±inf`` and ``p = 0``.

    Raises ``ValueError`` when the arms have different numbers of seeds, when there are none, when a value
    is NaN or infinite, or when ``confidence`` is not strictly between 0 and 1.
    """
    a, b = _finite_values(a, "a"), _finite_values(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a has {len(a)} seed values and b has {len(b)}: a paired comparison needs the same "
                         "seeds, in the same order, in both arms")
    if len(a) == 0:
        raise ValueError("a and b are empty: a paired comparison needs at least one seed")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    n, diffs = len(a), a - b
    mean = float(diffs.mean())
    if n < 2:
        sd = t = p = low = high = math.nan
    elif np.ptp(diffs) == 0:
        sd, low, high = 0.0, mean, mean
        t, p = (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    else:
        sd = float(diffs.std(ddof=1))
        with warnings.catch_warnings():  # differences equal up to rounding: scipy warns, the result stands
            warnings.simplefilter("ignore", RuntimeWarning)
            test = stats.ttest_rel(a, b)
        t, p = float(test.statistic), float(test.pvalue)
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
        low, high = mean - half, mean + half
    return PairedDifference(n=n, mean_a=float(a.mean()), mean_b=float(b.mean()), mean_diff=mean, sd_diff=sd,
                            ci_low=low, ci_high=high, t=t, p=p, confidence=confidence,
                            diffs=tuple(float(d) for d in diffs))


def holm_adjust(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given.

    The k-th smallest of m p-values is multiplied by ``m - k + 1``, then made non-decreasing in that order
    and capped at 1. NaN (a test that could not be run, e.g. one seed) stays NaN and is not counted in m.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be a flat list, got an array of shape {p.shape}")
    valid = np.flatnonzero(~np.isnan(p))
    if np.any((p[valid] < 0) | (p[valid] > 1)):
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN), got {p.tolist()}")
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted = np.full(len(p), np.nan)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def decide(primary: PairedDifference, higher_is_better: bool = True) -> str:
    """The pre-registered verdict on arm ``a`` against arm ``b``.

    Rule: if the interval for ``mean(a - b)`` (95 % unless the difference was built with another
    ``confidence``) lies wholly above 0, ``a`` is "better" when higher is better and "worse" otherwise;
    wholly below 0, the reverse; if it contains 0, or is NaN (fewer than two seeds), "no difference shown".
    An interval that excludes 0 is the same event as the paired t-test's ``p < 1 - confidence``.
    """
    if primary.ci_low > 0:
        return "better" if higher_is_better else "worse"
    if primary.ci_high < 0:
        return "worse" if higher_is_better else "better"
    return "no difference shown"  # also when the interval is NaN: NaN comparisons are False


def paired_table(values: Mapping[str, Mapping[str, Sequence[float]]], contrasts: Sequence[tuple[str, str]],
                 metrics: Sequence[str], secondary_metrics: Sequence[str] = (),
                 confidence: float = 0.95,
                 lower_is_better: Callable[[str], bool] = lower_is_better) -> list[dict]:
    """One row per contrast and metric: the :class:`PairedDifference` fields, ``p_holm`` and ``verdict``.

    ``values[arm][metric]`` lists one number per seed, seeds in the same order for every arm. Rows cover
    ``metrics`` then any ``secondary_metrics`` not already listed. A metric in ``secondary_metrics`` belongs
    to that contrast's Holm family: ``p_holm`` is adjusted over the family and its verdict is the direction
    of the difference only when ``p_holm < 1 - confidence``. Any other metric is primary: a family of one,
    so ``p_holm == p``, and its verdict is :func:`decide` on its interval (the same rule, unadjusted).
    ``lower_is_better(metric)`` gives each metric's direction (by default: names holding a word of ``LOWER_IS_BETTER``);
    ``confidence`` sets every interval and the level ``p_holm`` is held to.
    """
    secondary = set(secondary_metrics)
    names = list(dict.fromkeys([*metrics, *secondary_metrics]))
    rows = []
    for arm_a, arm_b in contrasts:
        diffs = {m: _difference(values, arm_a, arm_b, m, confidence) for m in names}
        family = [m for m in names if m in secondary]
        p_holm = dict(zip(family, holm_adjust([diffs[m].p for m in family])))
        for m in names:
            d, higher = diffs[m], not lower_is_better(m)
            verdict = decide(d, higher)
            if m in secondary and not p_holm[m] < 1 - confidence:
                verdict = "no difference shown"
            rows.append({"contrast": f"{arm_a} - {arm_b}", "metric": m, **d.as_dict(),
                         "p_holm": p_holm.get(m, d.p), "verdict": verdict})
    return rows


def _difference(values: Mapping[str, Mapping[str, Sequence[float]]], arm_a: str, arm_b: str, metric: str,
                confidence: float) -> PairedDifference:
    try:
        return paired_difference(_seeds(values, arm_a, metric), _seeds(values, arm_b, metric), confidence)
    except ValueError as error:
        raise ValueError(f"contrast {arm_a} - {arm_b}, metric {metric!r}: {error}") from error


def _seeds(values: Mapping[str, Mapping[str, Sequence[float]]], arm: str, metric: str) -> Sequence[float]:
    if arm not in values:
        raise ValueError(f"no values for arm {arm!r}; arms present: {sorted(values)}")
    if metric not in values[arm]:
        raise ValueError(f"arm {arm!r} has no metric {metric!r}; its metrics: {sorted(values[arm])}")
    return values[arm][metric]
