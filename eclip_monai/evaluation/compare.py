"""Compare two models over several training seeds: mean ± std per metric and a verdict per metric.

A verdict is only "better" when Welch's t-test over the seeds says the difference is unlikely to be noise
(p < ``alpha``); with three seeds that takes a clear gap, which is the point: one lucky seed decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

# Metrics where smaller is better; every other metric is better when larger.
LOWER_IS_BETTER = ("modality_gap", "alignment", "uniformity", "loss")


def flatten(results: Mapping, prefix: str = "") -> dict[str, float]:
    """``{"a/b/c": value}`` for every number in nested ``results`` (lists, e.g. matrices, are left out)."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


@dataclass(frozen=True)
class Comparison:
    metric: str
    a: tuple[float, float]  # mean, std over seeds
    b: tuple[float, float]
    p_value: float
    verdict: str


def compare(runs_a: Sequence[Mapping[str, float]], runs_b: Sequence[Mapping[str, float]], metrics: Sequence[str],
            name_a: str = "A", name_b: str = "B", alpha: float = 0.05) -> list[Comparison]:
    """One :class:`Comparison` per metric present in every run of both models (per-seed flat metric dicts)."""
    rows = []
    for metric in metrics:
        if not all(metric in run for run in (*runs_a, *runs_b)):
            continue
        a = np.array([run[metric] for run in runs_a])
        b = np.array([run[metric] for run in runs_b])
        if len(a) > 1 and len(b) > 1 and (a.std() > 0 or b.std() > 0):
            p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
        else:
            p = 0.0 if a.mean() != b.mean() and len(a) > 1 and len(b) > 1 else 1.0
        a_wins = a.mean() < b.mean() if lower_is_better(metric) else a.mean() > b.mean()
        verdict = "no clear difference" if p >= alpha else f"{name_a if a_wins else name_b} better"
        rows.append(Comparison(metric, (float(a.mean()), float(a.std())), (float(b.mean()), float(b.std())),
                               p, verdict))
    return rows


def format_table(rows: Sequence[Comparison], name_a: str, name_b: str, seeds: int) -> str:
    """A plain-text table: metric, both models' mean ± std, Welch p and the verdict."""
    width = max([len(r.metric) for r in rows] + [6])
    head = (f"{'metric':<{width}}  {name_a + f' (n={seeds})':>17}  {name_b + f' (n={seeds})':>17}  "
            f"{'p':>6}  verdict")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.metric:<{width}}  {r.a[0]:>8.3f} ± {r.a[1]:<6.3f}  {r.b[0]:>8.3f} ± {r.b[1]:<6.3f}  "
                     f"{r.p_value:>6.3f}  {r.verdict}")
    return "\n".join(lines)


def verdict_line(rows: Sequence[Comparison], name_a: str, name_b: str) -> str:
    """One sentence: how many metrics each model wins and how many are undecided."""
    wins_a = [r.metric for r in rows if r.verdict == f"{name_a} better"]
    wins_b = [r.metric for r in rows if r.verdict == f"{name_b} better"]
    undecided = len(rows) - len(wins_a) - len(wins_b)
    return (f"verdict: {name_a} better on {len(wins_a)} metric(s) {wins_a}, {name_b} better on {len(wins_b)} "
            f"{wins_b}, no clear difference on {undecided} of {len(rows)} (Welch t-test over seeds, p < 0.05)")
