"""The expert curriculum: the probability schedule, its phases, the injection draws, the handler's state."""

from __future__ import annotations

import logging

import pytest
from ignite.engine import Engine, Events

from eclip_monai.handlers import PHASES, ExpertCurriculumHandler, curriculum_phase, expert_probability


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.0), (99, 0.0), (100, 0.05), (250, 0.275), (400, 0.5), (600, 0.275), (800, 0.05), (999, 0.05)],
)
def test_probability_at_phase_boundaries_and_midpoints(step, expected):
    assert expert_probability(step, 1000) == pytest.approx(expected, abs=1e-12)


def test_probability_is_exact_at_the_phase_starts():
    assert expert_probability(100, 1000) == 0.05 and expert_probability(400, 1000) == 0.5
    assert expert_probability(800, 1000) == 0.05


def test_probability_rises_through_warm_up_and_falls_through_cool_down():
    warm = [expert_probability(s, 1000) for s in range(100, 400)]
    cool = [expert_probability(s, 1000) for s in range(400, 800)]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(a > b for a, b in zip(cool, cool[1:]))


def test_phases_change_exactly_at_the_boundaries():
    phases = {s: curriculum_phase(s, 1000) for s in (0, 99, 100, 399, 400, 799, 800, 5000)}
    assert phases == {
        0: "cold_start",
        99: "cold_start",
        100: "warm_up",
        399: "warm_up",
        400: "cool_down",
        799: "cool_down",
        800: "final",
        5000: "final",
    }


def test_custom_ratios_and_probabilities_move_the_schedule():
    assert expert_probability(199, 1000, cold_ratio=0.2) == 0.0
    assert expert_probability(200, 1000, cold_ratio=0.2, p_min=0.1, p_max=0.9) == 0.1
    assert expert_probability(500, 1000, cold_ratio=0.2, p_min=0.1, p_max=0.9) == 0.9


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (-0.1, 0.3, 0.4)])
def test_invalid_ratios_are_refused(ratios):
    with pytest.raises(ValueError, match="ratios"):
        expert_probability(0, 1000, *ratios)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"mode": "constant"}, 0.5),
        ({"mode": "constant", "constant_p": 0.2}, 0.2),
        ({"mode": "always"}, 1.0),
        ({"mode": "off"}, 0.0),
    ],
)
def test_modes_other_than_curriculum_hold_p_constant(kwargs, expected):
    handler = ExpertCurriculumHandler(max_steps=1000, **kwargs)
    assert {handler.probability(s) for s in (0, 50, 250, 999)} == {expected}


def test_curriculum_mode_follows_the_schedule():
    handler = ExpertCurriculumHandler(max_steps=1000)
    steps = (0, 100, 250, 400, 800)
    assert [handler.probability(s) for s in steps] == [expert_probability(s, 1000) for s in steps]


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        ExpertCurriculumHandler(max_steps=10, mode="sometimes")


def test_injection_frequency_matches_p():
    constant = ExpertCurriculumHandler(max_steps=10000, mode="constant", constant_p=0.3)
    rate = sum(constant.draw(s) for s in range(10000)) / 10000
    assert rate == pytest.approx(0.3, abs=0.02)  # ~4.4 standard deviations

    schedule = ExpertCurriculumHandler(max_steps=10000)
    draws = [schedule.draw(s) for s in range(10000)]
    expected = sum(schedule.probability(s) for s in range(10000))  # ~2475, standard deviation ~43
    assert sum(draws) == pytest.approx(expected, abs=200)
    assert not any(draws[:1000])  # cold start never injects
    assert all(ExpertCurriculumHandler(max_steps=100, mode="always").draw(s) for s in range(100))


def test_draws_agree_across_instances_with_the_same_seed():
    rank0, rank1 = (ExpertCurriculumHandler(max_steps=1000, seed=7) for _ in range(2))
    other_seed = ExpertCurriculumHandler(max_steps=1000, seed=8)
    draws = [rank0.draw(s) for s in range(1000)]
    assert draws == [rank1.draw(s) for s in range(1000)]
    assert draws != [other_seed.draw(s) for s in range(1000)]


def _run(handler: ExpertCurriculumHandler, iterations: int, start: int = 0) -> list[tuple]:
    """Drive ``handler`` with an engine whose step uses the expert batch whenever it is told to."""
    engine = Engine(lambda e, _: {"expert_used": int(e.state.inject_expert)})
    handler.attach(engine)
    seen = []

    @engine.on(Events.ITERATION_COMPLETED)
    def record(e):
        seen.append((e.state.inject_expert, e.state.expert_p, e.state.priming_weight, dict(e.state.metrics)))

    if start:
        engine.load_state_dict({"iteration": start, "epoch_length": iterations, "max_epochs": 2})
    engine.run(range(iterations), max_epochs=1 if not start else 2)
    return seen


def test_handler_sets_state_counts_used_batches_and_publishes_metrics():
    handler = ExpertCurriculumHandler(max_steps=100, mode="constant", constant_p=0.5, seed=3)
    seen = _run(handler, 100)
    injected = [inject for inject, *_ in seen]
    assert injected == [handler.draw(s) for s in range(100)]
    assert handler.expert_batches == sum(injected) > 0
    assert seen[-1][3]["expert_batches"] == handler.expert_batches
    assert seen[-1][3]["expert_p"] == 0.5
    assert seen[-1][3]["curriculum_phase"] == PHASES.index("final")


def test_priming_weight_only_during_cold_start():
    seen = _run(ExpertCurriculumHandler(max_steps=100, priming_weight=0.3), 100)
    weights = [w for _, _, w, _ in seen]
    assert weights[:10] == [0.3] * 10 and set(weights[10:]) == {0.0}
    assert {w for _, _, w, _ in _run(ExpertCurriculumHandler(max_steps=100, priming=False), 100)} == {0.0}


def test_state_dict_round_trip_resumes_counts_and_draw_sequence():
    uninterrupted = ExpertCurriculumHandler(max_steps=100, mode="constant", seed=5)
    full = _run(uninterrupted, 50) + _run(uninterrupted, 50, start=50)

    first = ExpertCurriculumHandler(max_steps=100, mode="constant", seed=5)
    head = _run(first, 50)
    resumed = ExpertCurriculumHandler(max_steps=100, mode="constant", seed=5)
    resumed.load_state_dict(first.state_dict())
    tail = _run(resumed, 50, start=50)

    assert [s[:3] for s in head + tail] == [s[:3] for s in full]
    assert resumed.expert_batches == uninterrupted.expert_batches == sum(s[0] for s in full)


def test_resuming_with_a_different_schedule_is_reported(caplog):
    saved = ExpertCurriculumHandler(max_steps=1000).state_dict()
    changed = ExpertCurriculumHandler(max_steps=2000, p_max=0.6)
    with caplog.at_level(logging.WARNING):
        changed.load_state_dict(saved)
    assert "max_steps: 1000 -> 2000" in caplog.text and "p_max: 0.5 -> 0.6" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ExpertCurriculumHandler(max_steps=1000).load_state_dict(saved)
    assert caplog.text == ""


def test_max_steps_defaults_to_the_engine_run_length():
    engine = Engine(lambda e, _: {})
    engine.state.max_epochs, engine.state.epoch_length = 3, 40
    handler = ExpertCurriculumHandler()
    handler.attach(engine)
    assert handler.max_steps == 120
