"""Guards that stop a training run which would otherwise finish quietly having trained the wrong thing."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from monai.utils import IgniteInfo, min_version, optional_import

Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import(
        "ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine", as_type="decorator"
    )


class TrainingGuard:
    """Ignite handler that stops ``ECLIPTrainer`` with a ``RuntimeError`` when a run is not the one asked for.

    Two failures otherwise pass in silence. An eCLIP run in which no expert image ever reaches the loss trains
    the CLIP baseline under the eCLIP name; a run that skips a large share of its samples as bad (each skip is
    only a warning, so that one corrupt file never kills an epoch) learns from a different dataset than the
    one configured. The guard counts, at each ``ITERATION_COMPLETED``, what the trainer's output reports:
    samples used (``n_main`` + ``n_expert``), expert samples that reached the loss (``n_expert`` of steps not
    ``skipped``), iterations whose expert draw (``engine.state.inject_expert``) succeeded, and the
    curriculum's expected number of expert batches (the sum of ``expert_p``). Skipped samples are the
    trainer's running ``engine.state.bad_samples`` (main and expert), so the samples seen are the samples used
    plus the bad ones; rows a step dropped for other reasons (DDP trimming, the expert batch of a step left
    with fewer than two pairs) count as neither.

    - **No expert reached the loss** (when ``require_experts`` and the trainer's network has a heatmap
      processor, ``trainer.has_experts``): at each ``EPOCH_COMPLETED`` once the curriculum has drawn an expert
      batch for a step that trained, as nothing but missing or bad expert data can then explain the absence;
      at ``COMPLETED`` also when the curriculum never asked for one (p = 0 throughout: mode ``"off"``) or
      expected at least ``min_expected_expert_batches`` and drew none. A run so short that the curriculum
      expected fewer and, by chance, drew none ends with a warning instead: the draw, not the data, is why.
    - **Too many bad samples**: at ``EPOCH_COMPLETED`` and ``COMPLETED``, when more than ``max_bad_fraction``
      of the samples seen were skipped, once at least ``min_samples`` were seen. The error summarises what was
      bad: counts per reason and up to ``examples`` files each, from the ``(reason, path)`` pairs the trainer
      leaves in ``engine.state.step_bad`` (datasets wrapped in ``SkipBadSamples(..., describe=True)``).

    Under DDP the sample counts are summed over the processes before the bad share is judged, so every
    process takes the same decision (expert counts are equal on all processes already: the trainer trims
    every rank to the common expert batch, and the curriculum's draw is the same everywhere). The counters
    are checkpointed with ``state_dict`` (add the guard to ``handlers.checkpoint_objects``) so a resumed run
    judges the whole run, as ``bad_samples`` is restored with the trainer. The per-reason summary is this
    process's own under DDP.

    Args:
        max_bad_fraction: largest share of the samples seen that may be skipped as bad; None to not check.
        require_experts: whether an eCLIP trainer must put expert images into the loss; False for the CLIP
            baseline (the bundle passes ``@experts``). A trainer whose network has no heatmap processor is
            never checked.
        min_samples: samples seen before the bad share is judged, so that one unlucky early batch cannot stop
            a run.
        min_expected_expert_batches: expected expert batches (sum of ``expert_p``) from which a run that drew
            none is an error; below it, only a warning. At 5 a working draw gives none with probability < 1 %.
        examples: files named per reason in the bad-share error.
        name: logger name; default the engine's logger.
    """

    def __init__(
        self,
        max_bad_fraction: float | None = 0.05,
        require_experts: bool = True,
        min_samples: int = 200,
        min_expected_expert_batches: float = 5.0,
        examples: int = 3,
        name: str | None = None,
    ) -> None:
        if max_bad_fraction is not None and not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1] or None, got {max_bad_fraction}.")
        self.max_bad_fraction = max_bad_fraction
        self.require_experts = require_experts
        self.min_samples = min_samples
        self.min_expected_expert_batches = min_expected_expert_batches
        self.examples = examples
        self.logger = logging.getLogger(name)
        self._name = name
        self.used_samples = 0
        self.expert_samples = 0
        self.expert_draws = 0
        self.expected_expert_batches = 0.0
        self.bad_reasons: dict[str, int] = {}
        self.bad_examples: dict[str, list[str]] = {}

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: the trainer (``ECLIPTrainer``).
        """
        if self._name is None:
            self.logger = engine.logger
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output if isinstance(engine.state.output, dict) else {}
        n_expert = int(output.get("n_expert", 0))
        self.used_samples += int(output.get("n_main", 0)) + n_expert
        self.expected_expert_batches += float(output.get("expert_p", 0.0))
        for reason, path in getattr(engine.state, "step_bad", ()):
            self.bad_reasons[reason] = self.bad_reasons.get(reason, 0) + 1
            examples = self.bad_examples.setdefault(reason, [])
            if len(examples) < self.examples and path not in examples:
                examples.append(path)
        if not output.get("skipped", 0):
            self.expert_samples += n_expert
            self.expert_draws += int(bool(getattr(engine.state, "inject_expert", False)))

    def epoch_completed(self, engine: Engine) -> None:
        if self.expert_draws:
            self._check_experts(engine)
        self._check_bad_share(engine)

    def completed(self, engine: Engine) -> None:
        expected = self.expected_expert_batches
        if self.expert_draws or expected == 0 or expected >= self.min_expected_expert_batches:
            self._check_experts(engine)
        elif self._experts_missing(engine):
            self.logger.warning(
                f"This eCLIP run trained without expert images: its curriculum expected only {expected:.1f} "
                "expert batch(es) over the run and drew none. Train longer for expert batches to take part."
            )
        self._check_bad_share(engine)

    def _experts_missing(self, engine: Engine) -> bool:
        return self.require_experts and getattr(engine, "has_experts", False) and not self.expert_samples

    def _check_experts(self, engine: Engine) -> None:
        if not self._experts_missing(engine):
            return
        stream = getattr(engine, "expert_stream", None)
        loaded = "no expert data loader" if stream is None else f"{stream.consumed} expert batch(es) loaded"
        raise RuntimeError(
            f"No expert image reached the loss after {engine.state.iteration} iterations of an eCLIP run: "
            f"the curriculum expected {self.expected_expert_batches:.1f} expert batch(es) and drew "
            f"{self.expert_draws} for steps that trained; {loaded}; {self._bad_samples(engine)} sample(s) "
            "skipped as bad in all. Likely causes: the expert datalist is empty or matches no training image "
            "(check egd_root / reflacx_root), every expert sample was skipped as bad (see the warnings that "
            "name the files), the curriculum mode is 'off' (or its probability 0 for the whole run), or no "
            "expert_data_loader was given. To train the CLIP baseline on purpose, set experts to false."
        )

    def _check_bad_share(self, engine: Engine) -> None:
        if self.max_bad_fraction is None:
            return
        bad, seen = self._global_counts(engine)
        if seen < max(self.min_samples, 1) or bad <= self.max_bad_fraction * seen:
            return
        raise RuntimeError(
            f"{bad} of {seen} samples seen ({bad / seen:.1%}) were skipped as bad after "
            f"{engine.state.iteration} iterations, more than max_bad_fraction={self.max_bad_fraction:.1%}: "
            f"the run would learn from a different dataset than the one configured.{self._summary()} "
            "The warnings of eclip_monai.data.robust name each file and field; fix or remove those samples, "
            "or raise max_bad_fraction if the share is expected."
        )

    def _summary(self) -> str:
        """`` By reason: <reason>: <n> (e.g. <paths>); ...`` over the bad samples described so far."""
        if not self.bad_reasons:
            return ""
        ranked = sorted(self.bad_reasons.items(), key=lambda item: -item[1])
        parts = [f"{reason!r}: {n} (e.g. {', '.join(self.bad_examples.get(reason, []))})"
                 for reason, n in ranked]
        return " By reason: " + "; ".join(parts) + "."

    def _bad_samples(self, engine: Engine) -> int:
        return int(getattr(engine.state, "bad_samples", 0))

    def _global_counts(self, engine: Engine) -> tuple[int, int]:
        """(bad, seen) summed over the DDP processes."""
        bad = self._bad_samples(engine)
        counts = (bad, self.used_samples + bad)
        if not (dist.is_available() and dist.is_initialized()):
            return counts
        total = torch.tensor(counts, device=getattr(engine.state, "device", None) or "cpu")
        dist.all_reduce(total)
        return int(total[0]), int(total[1])

    def state_dict(self) -> dict:
        return {
            "used_samples": self.used_samples,
            "expert_samples": self.expert_samples,
            "expert_draws": self.expert_draws,
            "expected_expert_batches": self.expected_expert_batches,
            "bad_reasons": dict(self.bad_reasons),
            "bad_examples": {reason: list(paths) for reason, paths in self.bad_examples.items()},
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.used_samples = int(state_dict["used_samples"])
        self.expert_samples = int(state_dict["expert_samples"])
        self.expert_draws = int(state_dict["expert_draws"])
        self.expected_expert_batches = float(state_dict["expected_expert_batches"])
        self.bad_reasons = dict(state_dict.get("bad_reasons", {}))  # absent from older checkpoints
        self.bad_examples = {r: list(paths) for r, paths in state_dict.get("bad_examples", {}).items()}
