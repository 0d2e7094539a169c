"""TrainingGuard: an eCLIP run without expert images, or one that skips too many bad samples, stops loudly.

Runs of the real ``ECLIPTrainer`` reuse the toy setup of ``test_trainer`` (4 iterations an epoch of 8 main
pairs, expert batches of 4); exact counts and resume are checked on a plain Ignite engine that emits the
trainer's ``state.output`` dictionaries.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from ignite.engine import Engine
from monai.bundle import ConfigParser
from test_trainer import BATCH, EXPERT_BATCH, build, make_dataset, make_loader

from eclip_monai.engines import ExpertStream
from eclip_monai.handlers import TrainingGuard

CONFIGS = Path(__file__).resolve().parents[1]


def fake_trainer(steps: list[dict], guard: TrainingGuard, has_experts: bool = True) -> Engine:
    """An engine whose iteration ``i`` reports ``steps[i % len(steps)]``: ``n_main``, ``n_expert``, ``bad``
    (samples skipped in the step) and ``inject`` (the curriculum's draw), as ``ECLIPTrainer`` does."""

    def step(engine: Engine, index: int) -> dict:
        s = steps[index]
        engine.state.bad_samples += s.get("bad", 0)
        engine.state.inject_expert = s.get("inject", s.get("n_expert", 0) > 0)
        return {"n_main": s["n_main"], "n_expert": s.get("n_expert", 0), "skipped": 0,
                "expert_p": s.get("p", 0.0), "bad_samples": engine.state.bad_samples}

    engine = Engine(step)
    engine.has_experts = has_experts
    engine.state.bad_samples = 0
    engine.state_dict_user_keys.append("bad_samples")
    guard.attach(engine)
    return engine


# ---- no expert image reached the loss ---------------------------------------------------------------------


def test_an_eclip_run_without_any_expert_sample_stops_at_its_end():
    setup = build(max_epochs=1, mode="off", handlers=(TrainingGuard(),))
    with pytest.raises(RuntimeError, match="No expert image reached the loss after 4 iterations") as error:
        setup.trainer.run()
    for cause in ("expert datalist is empty", "skipped as bad", "curriculum mode is 'off'"):
        assert cause in str(error.value)
    assert setup.trainer.state.iteration == 4  # the whole run was trained first: only the end can tell


def test_expert_batches_that_are_all_bad_stop_the_run_at_the_first_epoch_end():
    setup = build(max_epochs=4, mode="always", handlers=(TrainingGuard(max_bad_fraction=None),))
    all_bad = make_dataset(12, corrupt=tuple(range(12)), seed=1)
    setup.trainer.expert_stream = ExpertStream(make_loader(all_bad, batch_size=EXPERT_BATCH), seed=3)
    with pytest.raises(RuntimeError, match="drew 4 for steps that trained; 4 expert batch") as error:
        setup.trainer.run()
    assert "16 sample(s) skipped as bad" in str(error.value)
    assert setup.trainer.state.epoch == 1  # not 3 more epochs of CLIP under the eCLIP name


def test_an_eclip_run_whose_experts_reach_the_loss_passes():
    guard = TrainingGuard()
    setup = build(max_epochs=1, mode="always", handlers=(guard,))
    setup.trainer.run()
    assert guard.expert_samples == 4 * EXPERT_BATCH and guard.expert_draws == 4
    assert guard.used_samples == 4 * (BATCH + EXPERT_BATCH)


def test_a_run_too_short_to_expect_expert_batches_warns_and_a_long_one_stops(caplog):
    short = fake_trainer([{"n_main": 8, "p": 0.1, "inject": False}] * 10, TrainingGuard())  # expects 1 batch
    with caplog.at_level(logging.WARNING):
        short.run(range(10), max_epochs=1)
    assert "expected only 1.0 expert batch(es) over the run and drew none" in caplog.text
    long = fake_trainer([{"n_main": 8, "p": 0.6, "inject": False}] * 10, TrainingGuard())  # expects 6
    with pytest.raises(RuntimeError, match="the curriculum expected 6.0 expert batch\\(es\\) and drew 0"):
        long.run(range(10), max_epochs=1)


def test_the_clip_baseline_passes_without_experts():
    setup = build(max_epochs=1, mode="off", handlers=(TrainingGuard(require_experts=False),))
    setup.trainer.run()
    no_processor = fake_trainer([{"n_main": 8}], TrainingGuard(require_experts=True), has_experts=False)
    no_processor.run([0], max_epochs=2)  # a network without a heatmap processor is never checked


# ---- share of bad samples ---------------------------------------------------------------------------------


def test_a_run_skipping_more_bad_samples_than_allowed_stops_naming_the_counts():
    guard = TrainingGuard(max_bad_fraction=0.05, require_experts=False, min_samples=16)
    setup = build(max_epochs=2, corrupt=(5, 17, 30), mode="off", handlers=(guard,))
    with pytest.raises(RuntimeError, match=r"3 of 32 samples seen \(9.4%\) were skipped as bad") as error:
        setup.trainer.run()
    assert "max_bad_fraction=5.0%" in str(error.value) and setup.trainer.state.epoch == 1


@pytest.mark.parametrize(("max_bad_fraction", "min_samples"), [(0.1, 16), (0.05, 100)])
def test_a_bad_share_under_the_limit_or_over_too_few_samples_passes(max_bad_fraction, min_samples):
    guard = TrainingGuard(max_bad_fraction=max_bad_fraction, require_experts=False, min_samples=min_samples)
    setup = build(max_epochs=1, corrupt=(5, 17, 30), mode="off", handlers=(guard,))
    setup.trainer.run()
    assert setup.trainer.state.bad_samples == 3 and guard.used_samples == 29


def test_skipped_expert_samples_count_as_seen_and_bad():
    guard = TrainingGuard(max_bad_fraction=0.15, min_samples=0)
    engine = fake_trainer([{"n_main": 8, "n_expert": 2, "bad": 2}], guard)  # 2 of 4 expert samples bad
    with pytest.raises(RuntimeError, match="2 of 12 samples seen"):
        engine.run([0], max_epochs=1)


# ---- resume -----------------------------------------------------------------------------------------------


def test_a_resumed_run_judges_the_whole_run():
    steps = [{"n_main": 8, "n_expert": 4, "bad": 1}] * 10  # 10 bad of 130 seen per epoch: 7.7 %
    straight = fake_trainer(steps, TrainingGuard(min_samples=200))
    with pytest.raises(RuntimeError, match="20 of 260 samples seen"):
        straight.run(range(10), max_epochs=2)  # epoch 1 has too few samples to judge; epoch 2 stops

    first_guard = TrainingGuard(min_samples=200)
    first = fake_trainer(steps, first_guard)
    first.run(range(10), max_epochs=1)
    saved = json.loads(json.dumps({"trainer": first.state_dict(), "guard": first_guard.state_dict()}))
    resumed_guard = TrainingGuard(min_samples=200)
    resumed = fake_trainer(steps, resumed_guard)
    resumed.load_state_dict(saved["trainer"])
    resumed_guard.load_state_dict(saved["guard"])
    with pytest.raises(RuntimeError, match="20 of 260 samples seen"):
        resumed.run(range(10), max_epochs=2)

    forgetful = fake_trainer(steps, TrainingGuard(min_samples=200))  # the guard left out of the checkpoint
    forgetful.load_state_dict(saved["trainer"])
    forgetful.run(range(10), max_epochs=2)  # 20 bad of only 140 counted: too few to judge, the run passes


# ---- bundle wiring ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overlays", "required"), [([], True), (["configs/clip_baseline.json"], False)])
def test_the_training_bundle_guards_eclip_runs_and_checkpoints_the_guard(overlays, required):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "bundle/configs/train.json"), *(str(CONFIGS / o) for o in overlays)])
    guard = parser.get_parsed_content("training_guard")
    assert isinstance(guard, TrainingGuard)
    assert (guard.max_bad_fraction, guard.require_experts) == (0.05, required)
    assert "@training_guard" in parser["train"]["handlers"]
    assert parser["checkpoint_objects"]["guard"] == "@training_guard"
