"""The study machinery: the shipped protocol loads, runs are planned in complete seed pairs, finished steps are
not rerun, and the report turns per-run files into the pre-registered decision."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eclip_monai.errors import CXRDataError
from eclip_monai.study import runner
from eclip_monai.study.protocol import load_protocol, lookup
from eclip_monai.study.report import analyse, collect, verdict, write_report
from eclip_monai.study.runner import plan_runs, run_one

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "configs" / "study" / "protocol.json"


@pytest.fixture(scope="module")
def protocol():
    return load_protocol(PROTOCOL, root=ROOT)


def test_shipped_protocol_has_three_arms_five_seeds_and_a_negative_control(protocol):
    assert set(protocol.arms) == {"clip", "eclip", "eclip_random_heatmaps"}
    assert len(protocol.seeds) >= 5 and len(protocol.ablation_seeds) >= 3
    assert ("eclip", "clip") in protocol.contrasts and ("eclip", "eclip_random_heatmaps") in protocol.contrasts
    assert protocol.primary.name == "chexpert_zero_shot_auroc"
    assert protocol.overlays("clip") == (protocol.regime, "configs/clip_baseline.json")


def test_protocol_errors_name_the_field(tmp_path):
    raw = json.loads(PROTOCOL.read_text())
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps({**raw, "contrasts": [["eclip", "nope"]]}))
    with pytest.raises(CXRDataError, match="contrasts"):
        load_protocol(bad, root=ROOT)
    bad.write_text(json.dumps({**raw, "seeds": [0]}))
    with pytest.raises(CXRDataError, match="seeds"):
        load_protocol(bad, root=ROOT)
    bad.write_text(json.dumps({**raw, "arms": {**raw["arms"], "clip": ["configs/missing.json"]}}))
    with pytest.raises(CXRDataError, match="missing.json"):
        load_protocol(bad, root=ROOT)


def test_runs_are_planned_seed_major_so_an_early_stop_keeps_complete_pairs(protocol, tmp_path):
    runs = plan_runs(protocol, tmp_path)
    assert [(r.seed, r.arm) for r in runs[:3]] == [(protocol.seeds[0], a) for a in protocol.arms]
    assert len(runs) == len(protocol.seeds) * len(protocol.arms)
    assert {r.arm for r in plan_runs(protocol, tmp_path, ablations=True)} == set(protocol.ablation_arms)


def test_finished_steps_are_not_rerun_and_a_partial_training_restarts(protocol, tmp_path, monkeypatch):
    calls = []

    def fake_bundle(configs, run, study_dir, overrides, log, threads=None):
        calls.append(configs[-1])
        if configs[-1].endswith("train.json") or configs[-1] in run.overlays:  # the training step
            (run.checkpoint).mkdir(parents=True, exist_ok=True)
            (run.checkpoint / protocol.checkpoint_file).write_text("weights")
        return 1.0

    monkeypatch.setattr(runner, "_bundle", fake_bundle)
    run = plan_runs(protocol, tmp_path, seeds=[0], arms=["clip"])[0]
    (run.run_dir / "stale").mkdir(parents=True)  # what a killed training leaves behind
    run_one(protocol, run, tmp_path)
    assert len(calls) == 3 and not (run.run_dir / "stale").exists()
    for path in (run.metrics_file, run.gaze_file):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    calls.clear()
    run_one(protocol, run, tmp_path)
    assert calls == []


def _fake_results(chexpert_auroc: float, r10: float, pointing: float) -> tuple[dict, dict]:
    metrics = {
        "chexpert_5x200": {"n": 1000, "skipped": 0, "zero_shot": {"auroc": chexpert_auroc, "accuracy": 0.6},
                           "linear_probe": {"10%": {"auroc": {"mean": 0.9}}}},
        "rsna_pneumonia": {"n": 1000, "skipped": 0, "zero_shot": {"auroc": 0.6}},
        "mimic_test": {"n": 500, "unique_reports": 500, "skipped": 0,
                       "retrieval": {"t2i_R@10": r10, "i2t_R@10": r10},
                       "embedding_quality": {"modality_gap": 0.5, "alignment": 1.0, "uniformity_joint": -2.0}},
        "openi": {"n": 500, "skipped": 0, "retrieval": {"t2i_R@10": r10}},
    }
    gaze = {"pointing_game": pointing, "mass_inside": 0.1, "nss": 0.2, "auc": 0.6}
    return metrics, gaze


def _write_runs(protocol, study_dir: Path, primary: dict[str, list[float]], r10: float = 0.12) -> list:
    runs = plan_runs(protocol, study_dir)
    for run in runs:
        metrics, gaze = _fake_results(primary[run.arm][run.seed], r10, 0.1 + 0.01 * run.seed)
        run.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        run.metrics_file.write_text(json.dumps(metrics))
        run.gaze_file.write_text(json.dumps(gaze))
    return runs


def test_report_applies_the_decision_rule_to_paired_seeds(protocol, tmp_path):
    base = [0.86, 0.88, 0.87, 0.90, 0.85]
    primary = {"clip": base, "eclip": [b + 0.02 + 0.001 * i for i, b in enumerate(base)],
               "eclip_random_heatmaps": [b + 0.021 - 0.001 * i for i, b in enumerate(base)]}
    runs = _write_runs(protocol, tmp_path, primary)
    analysis = analyse(protocol, collect(protocol, runs))
    assert analysis["learning_check"]["passed"] is True
    assert math.isclose(analysis["learning_check"]["mimic_t2i_R@10_chance"], 10 / 500)
    rows = {(r["contrast"], r["metric"]): r for r in analysis["contrasts"]}
    main = rows["eclip - clip", "chexpert_zero_shot_auroc"]
    assert main["verdict"] == "better" and main["ci_low"] > 0 and main["n"] == 5
    assert math.isclose(main["mean_diff"], 0.022, abs_tol=1e-9)
    control = rows["eclip - eclip_random_heatmaps", "chexpert_zero_shot_auroc"]
    assert control["verdict"] == "no difference shown"
    assert rows["eclip - clip", "gaze_nss"]["p_holm"] is not None
    text = verdict(analysis, protocol)
    assert "beats clip" in text and "not shown to come from the gaze location" in text
    json_path, md_path = write_report(analysis, protocol, tmp_path / "docs", text)
    assert json.loads(json_path.read_text())["seeds_complete"] == list(protocol.seeds)
    assert "| eclip - clip | chexpert_zero_shot_auroc |" in md_path.read_text()


def test_a_baseline_that_did_not_learn_makes_the_comparison_uninformative(protocol, tmp_path):
    chance = [0.55, 0.5, 0.52, 0.51, 0.53]
    runs = _write_runs(protocol, tmp_path, {arm: chance for arm in protocol.arms}, r10=0.03)
    analysis = analyse(protocol, collect(protocol, runs))
    assert analysis["learning_check"]["passed"] is False
    assert "not informative" in verdict(analysis, protocol)


def test_incomplete_seeds_are_left_out_of_the_pairs(protocol, tmp_path):
    runs = _write_runs(protocol, tmp_path, {arm: [0.9] * 5 for arm in protocol.arms})
    missing = next(r for r in runs if r.arm == "eclip" and r.seed == protocol.seeds[-1])
    missing.gaze_file.unlink()
    assert collect(protocol, runs)["seeds"] == list(protocol.seeds[:-1])
    with pytest.raises(KeyError, match="zero_shot"):
        lookup({"chexpert_5x200": {}}, protocol.primary)


def test_regime_builds_the_frozen_study_network_from_the_bundle_configs(protocol, tmp_path):
    """The regime overlay on train.json gives the pre-registered network: MobileNetV3 + locked MiniLM with a
    feature cache, and a heatmap processor on the paper's 14 x 14 grid; the CLIP overlay removes the processor."""
    from monai.bundle import ConfigParser

    def network(*overlays: str):
        from monai.utils import set_determinism

        set_determinism(seed=0)  # as the bundle's "initialize" does with the run seed
        parser = ConfigParser()
        parser.read_config([str(ROOT / "bundle/configs/train.json"), *(str(ROOT / o) for o in overlays)])
        parser.update({"runs_dir": str(tmp_path)})
        return parser.get_parsed_content("network_def"), parser

    eclip, parser = network(*protocol.overlays("eclip"))
    assert parser["phantom_options"]["eval_size"] == 1000
    assert eclip.text_cache is not None and eclip.text_cache.path.parent == tmp_path
    assert eclip.heatmap_processor.patch_size * 14 == parser["image_size"]
    assert not any(p.requires_grad for p in eclip.clip.text.transformer.parameters())
    clip, _ = network(*protocol.overlays("clip"))
    assert clip.heatmap_processor is None
    paired = zip(clip.clip.visual.state_dict().items(), eclip.clip.visual.state_dict().items())
    assert all(n1 == n2 and torch.equal(w1, w2) for (n1, w1), (n2, w2) in paired)  # same seed, same towers


def test_ablations_pair_by_seed_even_when_the_reference_misses_one(protocol, tmp_path):
    main_runs = _write_runs(protocol, tmp_path, {arm: [0.90, 0.91, 0.92, 0.93, 0.94] for arm in protocol.arms})
    next(r for r in main_runs if r.arm == protocol.ablation_reference and r.seed == 1).gaze_file.unlink()
    ablation_runs = plan_runs(protocol, tmp_path, ablations=True)
    for run in ablation_runs:  # each ablation is its seed's reference minus 0.01
        metrics, gaze = _fake_results(0.90 + 0.01 * run.seed - 0.01, 0.12, 0.1)
        run.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        run.metrics_file.write_text(json.dumps(metrics))
        run.gaze_file.write_text(json.dumps(gaze))
    per_seed = collect(protocol, plan_runs(protocol, tmp_path, seeds=[0, 2, 3, 4]))
    analysis = analyse(protocol, per_seed, collect(protocol, ablation_runs))
    assert analysis["ablations"]["seeds"] == [0, 2]
    for row in analysis["ablations"]["rows"]:
        assert row["diffs"] == pytest.approx((0.01, 0.01))
