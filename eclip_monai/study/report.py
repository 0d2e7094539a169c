"""Turn a study's runs into ``results.json``, ``results.md`` and figures: per-seed values, paired differences
with t-intervals, Holm-adjusted secondaries, the learning check and the ablations.

Everything here reads files the runs wrote, so the report can be rebuilt at any time (also mid-study: it then
covers the complete seed pairs so far).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from eclip_monai.evaluation.paired import paired_table
from eclip_monai.study.figures import read_scalars
from eclip_monai.study.protocol import Endpoint, Protocol, lookup
from eclip_monai.study.runner import RunSpec

__all__ = ["collect", "learning_check", "write_report"]


def _run_results(run: RunSpec) -> dict | None:
    if not (run.metrics_file.is_file() and run.gaze_file.is_file()):
        return None
    results = json.loads(run.metrics_file.read_text())
    results["gaze_attention"] = json.loads(run.gaze_file.read_text())
    timing = run.run_dir / "timing.json"
    results["timing"] = json.loads(timing.read_text()) if timing.is_file() else {}
    return results


def collect(protocol: Protocol, runs: Sequence[RunSpec]) -> dict:
    """``{"per_run": [...], "values": {arm: {endpoint: [per seed]}}, "seeds": [...]}`` over the seeds whose
    runs are complete in every arm (pairs only)."""
    finished = {(r.arm, r.seed): res for r in runs if (res := _run_results(r)) is not None}
    arms = sorted({r.arm for r in runs}, key=[r.arm for r in runs].index)
    seeds = sorted({r.seed for r in runs if all((a, r.seed) in finished for a in arms)})
    per_run, values = [], {arm: {e.name: [] for e in protocol.endpoints} for arm in arms}
    for seed in seeds:
        for arm in arms:
            results = finished[arm, seed]
            run = next(r for r in runs if (r.arm, r.seed) == (arm, seed))
            row = {"arm": arm, "seed": seed, "timing": results["timing"], "skipped": _skipped(results),
                   **_training_summary(run)}
            for endpoint in protocol.endpoints:
                row[endpoint.name] = value = lookup(results, endpoint)
                values[arm][endpoint.name].append(value)
            row["mimic_test_unique_reports"] = results.get("mimic_test", {}).get("unique_reports")
            row["chexpert_n"] = results.get("chexpert_5x200", {}).get("n")
            per_run.append(row)
    return {"per_run": per_run, "values": values, "seeds": seeds, "arms": arms}


def _training_summary(run: RunSpec, window: int = 10) -> dict:
    """InfoNCE over the first and last ``window`` steps and the number of steps, from the run's TensorBoard log:
    a run that has learned ends well below ln(batch), where it starts."""
    _, loss = read_scalars(run.run_dir / "tensorboard", "loss_clip")
    _, experts = read_scalars(run.run_dir / "tensorboard", "expert_batches")
    if not loss:
        return {}
    return {"steps": len(loss), "loss_first": sum(loss[:window]) / len(loss[:window]),
            "loss_last": sum(loss[-window:]) / len(loss[-window:]), "expert_batches": int(max(experts, default=0))}


def _skipped(results: Mapping) -> int:
    return int(sum(v.get("skipped", 0) for v in results.values() if isinstance(v, Mapping)))


def learning_check(protocol: Protocol, collected: dict) -> dict:
    """Did the baseline arm learn? Mean over seeds of CheXpert zero-shot AUROC and MIMIC-test text→image R@10
    against chance (10 / distinct reports), each against the protocol's threshold."""
    check = protocol.learning_check
    arm = check.get("arm", "clip")
    rows = [r for r in collected["per_run"] if r["arm"] == arm]
    if not rows:
        return {"arm": arm, "passed": None, "reason": "no complete run of this arm yet"}
    auroc = sum(r["chexpert_zero_shot_auroc"] for r in rows) / len(rows)
    r10 = sum(r["mimic_t2i_R@10"] for r in rows) / len(rows)
    unique = rows[0]["mimic_test_unique_reports"] or math.nan
    chance = min(1.0, 10 / unique)
    result = {
        "arm": arm, "seeds": len(rows),
        "chexpert_zero_shot_auroc": auroc, "chexpert_zero_shot_auroc_min": check["chexpert_zero_shot_auroc_min"],
        "mimic_t2i_R@10": r10, "mimic_t2i_R@10_chance": chance, "mimic_t2i_R@10_chance_ratio": r10 / chance,
        "mimic_t2i_R@10_min_chance_ratio": check["mimic_t2i_R@10_min_chance_ratio"],
    }
    losses = [r for r in rows if "loss_last" in r]
    if losses:
        batch = int(json.loads(Path(protocol.regime).read_text()).get("batch_size", 64))
        result.update(ln_batch=math.log(batch), loss_first=sum(r["loss_first"] for r in losses) / len(losses),
                      loss_last=sum(r["loss_last"] for r in losses) / len(losses))
    result["passed"] = bool(auroc >= result["chexpert_zero_shot_auroc_min"]
                            and r10 / chance >= result["mimic_t2i_R@10_min_chance_ratio"])
    return result


def _tables(protocol: Protocol, collected: dict, contrasts: Sequence[tuple[str, str]],
            secondary: Sequence[Endpoint]) -> list[dict]:
    if len(collected["seeds"]) < 2:
        return []
    return paired_table(collected["values"], [tuple(c) for c in contrasts], [protocol.primary.name],
                        [e.name for e in secondary], confidence=protocol.confidence)


def analyse(protocol: Protocol, main: dict, ablation: dict | None = None) -> dict:
    """The numbers of the report: learning check, main contrasts (primary + Holm secondaries), descriptive
    contrasts and the ablations (primary only, each ablation against the reference arm)."""
    result = {
        "protocol": protocol.source,
        "seeds_complete": main["seeds"],
        "learning_check": learning_check(protocol, main),
        "contrasts": _tables(protocol, main, protocol.contrasts, protocol.secondary),
        "descriptive": [r for r in _tables(protocol, main, protocol.contrasts, protocol.descriptive)
                        if r["metric"] != protocol.primary.name],
        "per_run": main["per_run"],
    }
    if ablation is not None and ablation["seeds"]:
        reference = protocol.ablation_reference
        ref_rows = {r["seed"]: r for r in main["per_run"] if r["arm"] == reference}
        seeds = [s for s in ablation["seeds"] if s in ref_rows]
        by_run = {(r["arm"], r["seed"]): r for r in ablation["per_run"]}
        by_run.update({(reference, s): ref_rows[s] for s in seeds})
        arms = [reference, *(a for a in protocol.ablation_arms if a in ablation["values"])]
        values = {arm: {e.name: [by_run[arm, s][e.name] for s in seeds] for e in protocol.endpoints}
                  for arm in arms}
        rows = []
        if len(seeds) >= 2:
            rows = paired_table(values, [(reference, arm) for arm in protocol.ablation_arms if arm in values],
                                [protocol.primary.name], [], confidence=protocol.confidence)
        result["ablations"] = {"seeds": seeds, "rows": rows, "per_run": ablation["per_run"]}
    return result


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _row_md(row: dict) -> str:
    diffs = ", ".join(_fmt(d) for d in row["diffs"])
    return (f"| {row['contrast']} | {row['metric']} | {_fmt(row['mean_a'])} | {_fmt(row['mean_b'])} | "
            f"{_fmt(row['mean_diff'])} | [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}] | {_fmt(row['p'])} | "
            f"{_fmt(row['p_holm'])} | {row['verdict']} | {diffs} |")


TABLE_HEAD = ("| contrast | endpoint | mean a | mean b | a − b | 95 % CI | p | p (Holm) | verdict | per-seed a − b |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def render_markdown(analysis: dict, protocol: Protocol, verdict_text: str, figures: Sequence[str] = ()) -> str:
    """The tables of ``results.md`` (the prose around them is written by the caller)."""
    lines = [f"# Results: {protocol.name}", "",
             "Written by `scripts/study.py` from the runs on disk, following the pre-registered protocol in "
             "[study.md](study.md). Differences are a − b per seed; intervals are paired 95 % t-intervals.", "",
             verdict_text, ""]
    check = analysis["learning_check"]
    if check.get("passed") is not None:
        lines += ["## Learning check (CLIP arm, mean over seeds)", "",
                  "| measure | value | threshold | passed |", "| --- | --- | --- | --- |",
                  f"| CheXpert 5×200 zero-shot macro AUROC | {_fmt(check['chexpert_zero_shot_auroc'])} | "
                  f"≥ {check['chexpert_zero_shot_auroc_min']} | "
                  f"{check['chexpert_zero_shot_auroc'] >= check['chexpert_zero_shot_auroc_min']} |",
                  f"| MIMIC-test text→image R@10 / chance ({_fmt(check['mimic_t2i_R@10'])} / "
                  f"{_fmt(check['mimic_t2i_R@10_chance'])}) | {_fmt(check['mimic_t2i_R@10_chance_ratio'], 1)}× | "
                  f"≥ {check['mimic_t2i_R@10_min_chance_ratio']}× | "
                  f"{check['mimic_t2i_R@10_chance_ratio'] >= check['mimic_t2i_R@10_min_chance_ratio']} |"]
        if "loss_last" in check:
            lines.append(f"| InfoNCE, first → last 10 steps (chance: ln B = {check['ln_batch']:.3f}) | "
                         f"{_fmt(check['loss_first'])} → {_fmt(check['loss_last'])} | below ln B | "
                         f"{check['loss_last'] < check['ln_batch']} |")
        lines.append("")
    lines += ["## Paired comparisons (primary, then Holm-adjusted secondaries)", "", TABLE_HEAD]
    lines += [_row_md(r) for r in analysis["contrasts"]]
    lines += ["", "## Descriptive (no test claimed)", "", TABLE_HEAD]
    lines += [_row_md(r) for r in analysis["descriptive"]]
    if "ablations" in analysis:
        lines += ["", f"## Ablations (primary endpoint, seeds {analysis['ablations']['seeds']})", "", TABLE_HEAD]
        lines += [_row_md(r) for r in analysis["ablations"]["rows"]]
    runs = analysis["per_run"] + analysis.get("ablations", {}).get("per_run", [])
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    lines += ["", "## Per-seed values", "", "Each cell: mean ± sd over seeds, then the value of each seed in seed order.",
              "", "| endpoint | " + " | ".join(arms) + " |", "| --- |" + " --- |" * len(arms)]
    for endpoint in protocol.endpoints:
        cells = []
        for arm in arms:
            values = [r[endpoint.name] for r in runs if r["arm"] == arm]
            mean = sum(values) / len(values)
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else math.nan
            cells.append(f"{_fmt(mean)} ± {_fmt(sd)}: " + ", ".join(_fmt(v) for v in values))
        lines.append(f"| {endpoint.name} | " + " | ".join(cells) + " |")
    lines += ["", "## Training", "", "| arm | seed | steps | InfoNCE first → last 10 steps | expert batches | train s | "
              "evaluation s |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in runs:
        t = r["timing"]
        lines.append(f"| {r['arm']} | {r['seed']} | {r.get('steps', 'n/a')} | {_fmt(r.get('loss_first'))} → "
                     f"{_fmt(r.get('loss_last'))} | {r.get('expert_batches', 'n/a')} | {_fmt(t.get('train_s'), 0)} | "
                     f"{_fmt(t.get('evaluate_s', 0) + t.get('gaze_attention_s', 0), 0)} |")
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_report(analysis: dict, protocol: Protocol, out_dir: str | os.PathLike, verdict_text: str,
                 figures: Sequence[str] = (), stem: str = "results") -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` under ``out_dir``; ``<stem>_discussion.md``, when present there,
    is appended to the Markdown as its discussion."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(analysis, indent=2, default=float) + "\n")
    text = render_markdown(analysis, protocol, verdict_text, figures)
    discussion = out_dir / f"{stem}_discussion.md"  # hand-written reading of the numbers, kept across rebuilds
    if discussion.is_file():
        text += "\n## Discussion\n\n" + discussion.read_text()
    md_path.write_text(text)
    return json_path, md_path


def verdict(analysis: dict, protocol: Protocol) -> str:
    """The pre-registered decision in one paragraph: the primary endpoint of each contrast, judged by whether
    its paired 95 % interval excludes 0, and whether the baseline learned at all."""
    check = analysis["learning_check"]
    primary = {r["contrast"]: r for r in analysis["contrasts"] if r["metric"] == protocol.primary.name}
    if not primary:
        return "No complete seed pairs yet: nothing to decide."
    parts = []
    if check.get("passed") is False:
        parts.append("**The CLIP arm did not meet the learning check, so the comparison below is not informative.**")
    a, b = protocol.contrasts[0]
    for (x, y) in protocol.contrasts:
        row = primary.get(f"{x} - {y}")
        if row is None:
            continue
        interval = f"{row['mean_diff']:+.4f} (95 % CI {row['ci_low']:+.4f} to {row['ci_high']:+.4f}, n = {row['n']})"
        parts.append(f"{x} − {y} on {protocol.primary.name}: {interval} → **{row['verdict']}**.")
    main = primary.get(f"{a} - {b}")
    control = primary.get(f"{protocol.contrasts[1][0]} - {protocol.contrasts[1][1]}") if len(protocol.contrasts) > 1 else None
    if main is not None and main["verdict"] == "better":
        if control is not None and control["verdict"] == "better":
            parts.append(f"Decision: {a} beats {b}, and the gain depends on where the radiologists looked.")
        else:
            parts.append(f"Decision: {a} beats {b}, but not the random-heatmap control: the gain is not shown "
                         "to come from the gaze location.")
    elif main is not None:
        parts.append(f"Decision: the study does not show that {a} beats {b} on the primary endpoint.")
    return " ".join(parts)
