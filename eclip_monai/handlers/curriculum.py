"""The expert curriculum: how often expert (heatmap) batches join the main batch, and when to prime.

Over ``max_steps`` steps (0-based), with ``c = round(cold_ratio * max_steps)``,
``w = round((cold_ratio + warm_ratio) * max_steps)`` and ``k = round((cold_ratio + warm_ratio + cool_ratio) *
max_steps)``:

- cold start, steps ``[0, c)``: p = 0 (and the priming loss is on);
- warm-up, ``[c, w)``: p rises linearly from ``p_min`` at ``c`` towards ``p_max``;
- cool-down, ``[w, k)``: p falls linearly from ``p_max`` at ``w`` towards ``p_min``;
- final, ``[k, ...)``: p = ``p_min``.

With the defaults and 1000 steps: p = 0 up to step 99, 0.05 at 100, 0.275 at 250, 0.5 at 400, 0.05 from 800.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from eclip_monai.seeding import derive_seed

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )

PHASES = ("cold_start", "warm_up", "cool_down", "final")
MODES = ("curriculum", "constant", "always", "off")


def _phase_ends(max_steps: int, cold_ratio: float, warm_ratio: float, cool_ratio: float) -> tuple[int, ...]:
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}.")
    if min(cold_ratio, warm_ratio, cool_ratio) < 0 or cold_ratio + warm_ratio + cool_ratio > 1 + 1e-9:
        raise ValueError(
            f"curriculum ratios must be non-negative and sum to at most 1, got cold={cold_ratio}, "
            f"warm={warm_ratio}, cool={cool_ratio}."
        )
    cumulative = (cold_ratio, cold_ratio + warm_ratio, cold_ratio + warm_ratio + cool_ratio)
    return tuple(round(max_steps * r) for r in cumulative)  # type: ignore[return-value]


def curriculum_phase(
    step: int, max_steps: int, cold_ratio: float = 0.1, warm_ratio: float = 0.3, cool_ratio: float = 0.4
) -> str:
    """The phase (one of ``PHASES``) that 0-based ``step`` falls in."""
    ends = _phase_ends(max_steps, cold_ratio, warm_ratio, cool_ratio)
    return PHASES[sum(step >= end for end in ends)]


def expert_probability(
    step: int,
    max_steps: int,
    cold_ratio: float = 0.1,
    warm_ratio: float = 0.3,
    cool_ratio: float = 0.4,
    p_min: float = 0.05,
    p_max: float = 0.5,
) -> float:
    """Probability of injecting the expert batch at 0-based ``step`` (schedule: the module docstring)."""
    cold_end, warm_end, cool_end = _phase_ends(max_steps, cold_ratio, warm_ratio, cool_ratio)
    if step < cold_end:
        return 0.0
    if step < warm_end:
        return p_min + (p_max - p_min) * (step - cold_end) / (warm_end - cold_end)
    if step < cool_end:
        return p_max - (p_max - p_min) * (step - warm_end) / (cool_end - warm_end)
    return p_min


class ExpertCurriculumHandler:
    """Ignite handler that decides, each iteration, whether the trainer injects an expert batch.

    At ``ITERATION_STARTED`` it sets ``engine.state.expert_p`` (the probability),
    ``engine.state.inject_expert`` (the draw) and ``engine.state.priming_weight``, which ``ECLIPTrainer``
    reads. The draw is stateless, seeded from ``(seed, iteration)``, so every DDP rank takes the same decision
    and a resumed run draws the same sequence. At ``ITERATION_COMPLETED`` it counts the expert batches the
    trainer used (``output["expert_used"]``) and publishes ``expert_p``, ``expert_batches`` and
    ``curriculum_phase`` (index into ``PHASES``) in ``engine.state.metrics``, which MONAI's ``StatsHandler``
    and ``TensorBoardStatsHandler`` log at each epoch end; phase changes are logged as they happen. Checkpoint
    it (``state_dict``) to keep the count.

    Args:
        max_steps: length of the schedule in iterations; default ``max_epochs * epoch_length`` of the engine.
        cold_ratio, warm_ratio, cool_ratio: fractions of ``max_steps`` in cold start, warm-up and cool-down.
        p_min, p_max: the probability at the ends and at the peak of the schedule.
        mode: ``"curriculum"`` (the schedule), ``"constant"`` (``constant_p`` at every step: the
            no-curriculum ablation), ``"always"`` (p = 1: naive fuse) or ``"off"`` (p = 0: CLIP baseline).
        constant_p: p for ``mode="constant"``; default ``p_max``.
        priming_weight: w in ``(1 - w) * L_clip + w * L_prime`` during the cold start (the priming window
            is the cold start of the schedule, whatever the mode).
        priming: False switches the priming loss off (the no-priming ablation).
        seed: seed of the injection draws.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        max_steps: int | None = None,
        cold_ratio: float = 0.1,
        warm_ratio: float = 0.3,
        cool_ratio: float = 0.4,
        p_min: float = 0.05,
        p_max: float = 0.5,
        mode: str = "curriculum",
        constant_p: float | None = None,
        priming_weight: float = 0.3,
        priming: bool = True,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.max_steps = max_steps
        self.ratios = (cold_ratio, warm_ratio, cool_ratio)
        self.p_min, self.p_max = p_min, p_max
        self.mode = mode
        self.constant_p = p_max if constant_p is None else constant_p
        self.priming_weight = priming_weight if priming else 0.0
        self.seed = seed
        self.expert_batches = 0
        self.logger = logging.getLogger(name)
        self._name = name
        self._phase: str | None = None
        if max_steps is not None:
            _phase_ends(max_steps, *self.ratios)

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer (``ECLIPTrainer``).
        """
        if self._name is None:
            self.logger = engine.logger
        if self.max_steps is None:
            if engine.state.max_epochs is None or engine.state.epoch_length is None:
                raise ValueError("ExpertCurriculumHandler needs max_steps: the engine's run length is unset.")
            self.max_steps = engine.state.max_epochs * engine.state.epoch_length
            _phase_ends(self.max_steps, *self.ratios)
        engine.add_event_handler(Events.ITERATION_STARTED, self.iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def probability(self, step: int) -> float:
        """p at 0-based ``step`` under this handler's mode."""
        if self.mode == "curriculum":
            return expert_probability(step, self.max_steps, *self.ratios, self.p_min, self.p_max)
        return {"constant": self.constant_p, "always": 1.0, "off": 0.0}[self.mode]

    def phase(self, step: int) -> str:
        return curriculum_phase(step, self.max_steps, *self.ratios)

    def draw(self, step: int) -> bool:
        """Whether ``step`` injects the expert batch: a pure function of ``(seed, step)``."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "curriculum", step))
        return bool(torch.rand((), generator=generator) < self.probability(step))

    def iteration_started(self, engine: Engine) -> None:
        step = engine.state.iteration - 1
        phase = self.phase(step)
        engine.state.expert_p = self.probability(step)
        engine.state.inject_expert = self.draw(step)
        engine.state.priming_weight = self.priming_weight if phase == "cold_start" else 0.0
        if phase != self._phase:
            self._phase = phase
            self.logger.info(f"Expert curriculum: {phase} from step {step} (p={engine.state.expert_p:.3f}).")

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        self.expert_batches += int(isinstance(output, dict) and bool(output.get("expert_used", False)))
        engine.state.metrics.update(
            expert_p=engine.state.expert_p,
            expert_batches=self.expert_batches,
            curriculum_phase=PHASES.index(self._phase),
        )

    def config(self) -> dict:
        return {
            "max_steps": self.max_steps,
            "cold_ratio": self.ratios[0],
            "warm_ratio": self.ratios[1],
            "cool_ratio": self.ratios[2],
            "p_min": self.p_min,
            "p_max": self.p_max,
            "mode": self.mode,
            "constant_p": self.constant_p,
            "priming_weight": self.priming_weight,
            "seed": self.seed,
        }

    def state_dict(self) -> dict:
        return {"expert_batches": self.expert_batches, "config": self.config()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the count; a schedule that differs from the saved one is reported (resuming with, say, a
        longer ``max_steps`` is allowed, but the expert draws from here on follow the new schedule)."""
        self.expert_batches = int(state_dict["expert_batches"])
        saved, current = state_dict["config"], self.config()
        changed = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
        if changed:
            details = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items())
            self.logger.warning(f"Expert curriculum differs from the checkpoint's ({details}).")
