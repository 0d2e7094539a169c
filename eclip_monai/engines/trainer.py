"""The eCLIP training step: main batch, optional expert batch concatenated to it, one InfoNCE, priming.

``ECLIPTrainer`` is a MONAI ``SupervisedTrainer`` whose ``_iteration`` is the whole eCLIP step; curriculum,
logging, checkpoints, validation and LR schedule are handlers attached from the config. Its
``engine.state.output`` is a dictionary of floats: ``loss``, ``loss_clip``, ``loss_prime``, ``acc_i2t``,
``acc_t2i`` (in-batch retrieval), ``temperature`` (1 / logit scale), ``logit_scale``, ``grad_norm`` (before
clipping), ``expert_p``, ``expert_used``, ``expert_batches`` (consumed so far), ``n_main``, ``n_expert``,
``bad_samples`` (running total), ``lr`` and ``skipped``. A step whose batch kept fewer than 2 pairs after
dropping bad samples is skipped (``skipped=1``, no loss entries, no optimiser step). Log the output with
``StatsHandler(output_transform=lambda out: out)``.

Non-finite steps. A NaN or Inf loss term or gradient is caught before the optimiser step, so it never reaches
the weights. ``nonfinite_policy="stop"`` raises ``FloatingPointError`` naming the iteration, the term
(``loss_clip``, ``loss_prime`` or the first parameter with a non-finite gradient) and the batch's sample ids;
``"skip"`` drops the step (``skipped=1``, ``nonfinite=1``, counted in ``engine.state.nonfinite_steps``, which
is checkpointed) and stops as ``"stop"`` once more than ``max_nonfinite_skips`` steps were dropped. Under AMP
only the loss is checked: an Inf gradient there is the GradScaler's normal signal to lower its scale.

Exact resume. Every random draw is seeded from the run seed and a position: the global RNGs
(``set_determinism``) from ``(seed, iteration, rank)`` at each ``ITERATION_STARTED``, the expert draw from
``(seed, iteration)`` (``ExpertCurriculumHandler``), data order and augmentation from ``(seed, pass, index)``
(``engines.streams``). A DataLoader given as ``train_data_loader`` is wrapped in ``ResumableLoader`` because
Ignite 0.5.5, resuming mid-epoch, restarts the data iterator at its first batch; the wrapper starts it at the
engine's iteration instead. Resume is then exact from any checkpoint, epoch- or iteration-level, with the same
world size. (Other iterables go to Ignite unchanged and restart at their first batch.) Checkpoint
``handlers.checkpoint_objects(trainer, network=..., optimizer=..., lr_scheduler=..., curriculum=...)`` (it
adds ``trainer.expert_stream`` and, with AMP, ``trainer.scaler``) with ``AtomicCheckpointSaver`` and restore
it with MONAI's ``CheckpointLoader``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.engines.workflow import Workflow
from monai.utils import set_determinism
from torch.utils.data import DataLoader

from eclip_monai.data.robust import BAD_KEY, SKIPPED_KEY
from eclip_monai.seeding import derive_seed
from eclip_monai.engines.streams import ExpertStream, ResumableLoader
from eclip_monai.losses import PrimingLoss, batch_retrieval_accuracy

__all__ = ["ECLIPTrainer"]


def _rows(value: Any, rows: int) -> Any:
    """The first ``rows`` rows of a batch entry: a tensor, a list or a tokenizer's dictionary of tensors."""
    if isinstance(value, Mapping):
        return {k: _rows(v, rows) for k, v in value.items()}
    return value[:rows]


def to_device(value: Any, device: torch.device, **kwargs: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: to_device(v, device, **kwargs) for k, v in value.items()}
    if isinstance(value, MetaTensor):  # the towers need no metadata; plain tensors skip MetaTensor dispatch
        value = value.as_tensor()
    return value.to(device, **kwargs) if isinstance(value, torch.Tensor) else value


def _concat(main: Any, expert: Any) -> Any:
    if isinstance(main, Mapping):
        return {k: _concat(main[k], expert[k]) for k in main}
    return torch.cat([main, expert]) if isinstance(main, torch.Tensor) else list(main) + list(expert)


def _sample_ids(batch: Mapping, rows: int) -> list[str]:
    """The batch's first ``rows`` sample names: ``dicom_id`` or ``path`` entries, else the image files."""
    key = next((k for k in ("dicom_id", "path") if k in batch), None)
    names = batch[key] if key else getattr(batch.get("image"), "meta", {}).get("filename_or_obj", [])
    return [str(n) for n in list(names)[:rows]] if isinstance(names, (list, tuple)) else []


class ECLIPTrainer(SupervisedTrainer):
    """eCLIP trainer: injects an expert batch when ``engine.state.inject_expert`` (set each iteration by
    ``ExpertCurriculumHandler``) and adds the priming loss while ``engine.state.priming_weight`` > 0.

    Args:
        device, max_epochs, optimizer, kwargs: as for ``SupervisedTrainer`` (``train_handlers``, ``amp``,
            ``amp_kwargs``, ``epoch_length``, ``non_blocking``, ``to_kwargs``, ...). Gradient accumulation is
            refused: InfoNCE needs all of a step's pairs in one batch, as each other's negatives.
        train_data_loader: dictionaries with ``image_key`` and ``text_key``; build it over
            ``SkipBadSamples(dataset)`` with ``collate_fn=collate_skip_bad`` to skip and count bad samples.
        network: an eCLIP network (``eclip_monai.networks.ECLIP``, or DDP around it); only its ``forward`` is
            called, so DDP synchronises every gradient.
        loss_function: ``loss_function(image_features, text_features, logit_scale)``: ``ContrastiveLoss``.
        expert_data_loader: dictionaries with ``image_key``, ``heatmap_key`` and ``text_key`` (the full
            report), read through ``self.expert_stream`` (an ``ExpertStream``: checkpoint it).
        priming_loss: ``priming_loss(primed, image)``; default ``PrimingLoss()`` (mean squared error).
        clip_grad_norm: maximum total gradient norm (after AMP unscaling); None to not clip.
        image_key, text_key, heatmap_key: batch keys.
        seed: run seed of data order, augmentation and the network's random draws.
        decollate: MONAI's decollation of batch and output; off, as the output is a dictionary of floats.
        optim_set_to_none: clear gradients to None, not zero, so that parameters idle in a step (the heatmap
            processor without experts or priming) get no momentum or weight-decay update; a zero gradient
            left from before a restart would otherwise move them, and resume would not be exact.
        nonfinite_policy: ``"stop"`` or ``"skip"`` a step whose loss or gradient is NaN or Inf (see above).
        max_nonfinite_skips: with ``"skip"``, the most steps dropped in a run before it stops.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        expert_data_loader: DataLoader | None = None,
        priming_loss: Callable | None = None,
        clip_grad_norm: float | None = 1.0,
        image_key: str = "image",
        text_key: str = "text",
        heatmap_key: str = "heatmap",
        seed: int = 0,
        decollate: bool = False,
        optim_set_to_none: bool = True,
        nonfinite_policy: str = "stop",
        max_nonfinite_skips: int = 10,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("accumulation_steps", 1) != 1:
            raise ValueError("ECLIPTrainer does not accumulate gradients: InfoNCE needs one batch per step.")
        if nonfinite_policy not in ("stop", "skip"):
            raise ValueError(f"nonfinite_policy: expected 'stop' or 'skip', found {nonfinite_policy!r}")
        self.has_experts = bool(getattr(getattr(network, "module", network), "has_experts", False))
        if expert_data_loader is not None and not self.has_experts:
            raise ValueError("expert_data_loader was given but the network has no heatmap processor.")
        if isinstance(train_data_loader, DataLoader):
            train_data_loader = ResumableLoader(train_data_loader, seed, lambda: self.state.iteration)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            **kwargs,
        )
        self.expert_stream = None if expert_data_loader is None else ExpertStream(expert_data_loader, seed)
        self.priming_loss = PrimingLoss() if priming_loss is None else priming_loss
        self.clip_grad_norm = clip_grad_norm
        self.image_key, self.text_key, self.heatmap_key = image_key, text_key, heatmap_key
        self.seed = seed
        self.nonfinite_policy, self.max_nonfinite_skips = nonfinite_policy, max_nonfinite_skips
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        # defaults for a run without ExpertCurriculumHandler, which sets the first three each iteration
        self.state.inject_expert, self.state.expert_p, self.state.priming_weight = False, 0.0, 0.0
        self.state.bad_samples, self.state.nonfinite_steps, self.state.step_bad = 0, 0, []
        self.state_dict_user_keys.extend(["bad_samples", "nonfinite_steps"])
        self.add_event_handler(Events.ITERATION_STARTED, self._reseed)

    def run(self) -> None:  # type: ignore[override]
        """Run as MONAI's ``Trainer.run`` does, but keep the GradScaler made in ``__init__`` (MONAI makes a
        new one per call) so a checkpoint can restore its state: ``save_dict["scaler"] = trainer.scaler``."""
        Workflow.run(self)

    def _reseed(self, engine: ECLIPTrainer) -> None:
        set_determinism(derive_seed(self.seed, "iteration", engine.state.iteration, engine.state.rank))

    def _load(self, batch: Mapping, key: str, rows: int) -> Any:
        """The first ``rows`` rows of ``batch[key]`` on the device."""
        value = _rows(batch[key], rows)
        return to_device(value, self.state.device, non_blocking=self.non_blocking, **self.to_kwargs)

    def _common_sizes(self, n_main: int, n_expert: int) -> tuple[int, int]:
        """Under DDP, the smallest main and expert batch over the ranks, to which every rank trims: the
        gathered InfoNCE needs as many rows on every rank, and a skipped step must be skipped by all ranks.
        Sizes differ only where bad samples were dropped or a loader's last batch is short."""
        if not (dist.is_available() and dist.is_initialized()):
            return n_main, n_expert
        sizes = torch.tensor([n_main, n_expert], device=self.state.device)
        dist.all_reduce(sizes, op=dist.ReduceOp.MIN)
        return int(sizes[0]), int(sizes[1])

    def _iteration(self, engine: ECLIPTrainer, batchdata: dict[str, Any]) -> dict:
        engine.state.bad_samples += int(batchdata.get(SKIPPED_KEY, 0))
        engine.state.step_bad = list(batchdata.get(BAD_KEY, ()))  # (reason, path) of this step's bad samples
        expert: Mapping = {}
        if engine.state.inject_expert and self.expert_stream is not None:
            expert = next(self.expert_stream)
            engine.state.bad_samples += int(expert.get(SKIPPED_KEY, 0))
            engine.state.step_bad += list(expert.get(BAD_KEY, ()))
        n_main, n_expert = self._common_sizes(  # a batch whose samples were all bad has no image key
            len(batchdata.get(self.image_key, ())), len(expert.get(self.image_key, ()))
        )
        if n_main < 2:
            engine.logger.warning(f"Skipping iteration {engine.state.iteration}: {n_main} usable pair(s).")
            return self._output(engine, skipped=1, n_main=n_main, n_expert=0, expert_used=0)

        image = self._load(batchdata, self.image_key, n_main)
        text = self._load(batchdata, self.text_key, n_main)
        expert_image = expert_heatmap = None
        if n_expert:
            expert_image = self._load(expert, self.image_key, n_expert)
            expert_heatmap = self._load(expert, self.heatmap_key, n_expert)
            text = _concat(text, self._load(expert, self.text_key, n_expert))
        w = float(engine.state.priming_weight) if self.has_experts else 0.0

        def _forward_and_loss() -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor]:
            out = engine.network(
                image, text, expert_image=expert_image, expert_heatmap=expert_heatmap, prime=w > 0
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss_clip = engine.loss_function(out["image_features"], out["text_features"], out["logit_scale"])
            loss_prime = engine.priming_loss(out["primed"], image) if w > 0 else torch.zeros_like(loss_clip)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return out, (1 - w) * loss_clip + w * loss_prime, loss_clip, loss_prime

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                out, loss, loss_clip, loss_prime = _forward_and_loss()
            if not self._all_finite(loss):
                return self._nonfinite_step(engine, {"loss_clip": loss_clip, "loss_prime": loss_prime},
                                            batchdata, expert, n_main, n_expert)
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.unscale_(engine.optimizer)
            grad_norm = self._clip_gradients(engine)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            out, loss, loss_clip, loss_prime = _forward_and_loss()
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            grad_norm = self._clip_gradients(engine)
            if not bool(torch.isfinite(grad_norm)):  # NaN or Inf in a loss term makes the gradient so too
                return self._nonfinite_step(engine, {"loss_clip": loss_clip, "loss_prime": loss_prime},
                                            batchdata, expert, n_main, n_expert)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        acc_i2t, acc_t2i = batch_retrieval_accuracy(out["image_features"], out["text_features"])
        scale = out["logit_scale"]
        values = {
            "loss": loss,
            "loss_clip": loss_clip,
            "loss_prime": loss_prime,
            "acc_i2t": acc_i2t,
            "acc_t2i": acc_t2i,
            "temperature": 1 / scale,
            "logit_scale": scale,
            "grad_norm": grad_norm,
        }
        # one device-to-host copy for all of them: a float() per value would synchronise a GPU eight times
        host = torch.stack([v.detach().reshape(()) for v in values.values()]).tolist()
        return self._output(
            engine,
            **dict(zip(values, host)),
            skipped=0,
            n_main=n_main,
            n_expert=n_expert,
            expert_used=int(n_expert > 0),
        )

    def _all_finite(self, value: torch.Tensor) -> bool:
        """Whether ``value`` is finite on every DDP process, so that all of them take or skip the step."""
        finite = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def _nonfinite_step(self, engine: ECLIPTrainer, terms: Mapping[str, torch.Tensor], batch: Mapping,
                        expert: Mapping, n_main: int, n_expert: int) -> dict:
        """Apply ``nonfinite_policy`` to a step with a NaN or Inf loss or gradient, before any update."""
        term = next((f"{k} ({float(v.detach())})" for k, v in terms.items() if not torch.isfinite(v)), None)
        if term is None:
            params = getattr(engine.network, "module", engine.network).named_parameters()
            bad = (n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all())
            term = f"gradient of {next(bad, '?')}"
        engine.optimizer.zero_grad(set_to_none=True)
        engine.state.nonfinite_steps += 1
        ids = _sample_ids(batch, n_main) + _sample_ids(expert, n_expert)
        what = f"non-finite {term} at iteration {engine.state.iteration} (epoch {engine.state.epoch}); " \
               f"batch sample ids: {ids}"
        count, limit = engine.state.nonfinite_steps, self.max_nonfinite_skips
        if self.nonfinite_policy == "skip" and count <= limit:
            engine.logger.warning(f"Skipping the step: {what} ({count} of at most {limit} skipped).")
            return self._output(engine, skipped=1, nonfinite=1, n_main=n_main, n_expert=n_expert,
                                expert_used=0)
        if self.nonfinite_policy == "skip":
            what += f"; {count} steps dropped so far for a non-finite loss or gradient, more than " \
                    f"max_nonfinite_skips={limit}"
        raise FloatingPointError(f"Stopping training: {what}. The network keeps its weights from before this "
                                 "step. Lower learning_rate, keep clip_grad_norm on, check these samples, or "
                                 "set nonfinite_policy to 'skip'.")

    def _clip_gradients(self, engine: ECLIPTrainer) -> torch.Tensor:
        """Clip to ``clip_grad_norm`` (none when None); return the total norm before clipping."""
        max_norm = float("inf") if self.clip_grad_norm is None else self.clip_grad_norm
        return torch.nn.utils.clip_grad_norm_(engine.network.parameters(), max_norm)

    def _output(self, engine: ECLIPTrainer, **fields: float) -> dict:
        """``engine.state.output``: the step's ``fields`` plus the schedule and the running counters."""
        return {
            **fields,
            "expert_p": float(engine.state.expert_p),
            "expert_batches": 0 if self.expert_stream is None else self.expert_stream.consumed,
            "bad_samples": engine.state.bad_samples,
            "lr": float(engine.optimizer.param_groups[0]["lr"]),
        }
