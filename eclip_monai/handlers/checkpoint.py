"""Checkpoints that are never half-written, never hold NaN weights, and are refused by name when damaged."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.utils import IgniteInfo, min_version, optional_import

from eclip_monai.errors import CXRDataError
from eclip_monai.files import TEMP_SUFFIX, atomic_write
from eclip_monai.networks.checkpoint import DIGEST_KEY, checkpoint_digest, load_tensors

Checkpoint, _ = optional_import("ignite.handlers", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Checkpoint")
logger = logging.getLogger(__name__)


def _nonfinite(value: Any, name: str = "") -> str | None:
    """The name of the first floating-point tensor in ``value`` holding NaN or Inf, else None."""
    if isinstance(value, torch.Tensor):
        return name if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    if isinstance(value, Mapping):
        items = value.items()
    else:
        items = enumerate(value) if isinstance(value, (list, tuple)) else ()
    found = (_nonfinite(v, f"{name}.{k}" if name else str(k)) for k, v in items)
    return next((f for f in found if f is not None), None)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose every file is written by ``files.atomic_write`` (temporary name,
    ``fsync``, rename), so a kill, a full disk or a read-only folder never leaves a truncated file under a
    checkpoint's name, and the error names the checkpoint. Each file also carries the SHA-256 of its contents
    (``networks.checkpoint.DIGEST_KEY``) so the loaders refuse one altered afterwards; a single saved object
    is therefore stored under its name (``{"model": ...}``, which every loader reads) rather than bare, as
    Ignite would. A checkpoint holding a NaN or Inf tensor is refused before writing: ``model.pt`` or
    ``final.pt`` is never a diverged network. A file with a fixed name (``model.pt``, ``final.pt``) is
    replaced by the rename, not deleted first as MONAI does, so a failed write leaves the previous one.

    Two MONAI behaviours change. No checkpoint is written when the run raises (``save_on_exception``):
    Ignite counts the iteration an exception interrupts as done, so a ``final.pt`` written then would resume
    one batch late, and would label a failed run "final"; resume from the last interval checkpoint instead.
    The key-metric tracking (which score the current ``model.pt`` has) is the saver's ``state_dict``: put the
    best-model saver into the trainer's checkpoint so a resumed run does not overwrite a better ``model.pt``
    with its first validation. Temporary files left by a killed write are removed at ``attach``.

    Args:
        save_on_exception: write ``final_filename`` when the run raises, as MONAI does.
        args, kwargs: ``CheckpointSaver``'s.
    """

    def __init__(self, *args, save_on_exception: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.save_on_exception = save_on_exception
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._save_func = self._write
                if checkpoint.save_handler.filename is not None:  # the rename replaces a fixed name;
                    checkpoint.save_handler.remove = lambda filename: None  # deleting first opens a gap

    def _write(self, checkpoint: Mapping, path: Path, save: Callable) -> None:
        if len(self.save_dict) == 1 and not set(self.save_dict) <= set(checkpoint):
            checkpoint = {next(iter(self.save_dict)): checkpoint}  # Ignite stores a single object bare
        bad = _nonfinite(checkpoint)
        if bad is not None:
            raise FloatingPointError(f"{path}: refusing to save a checkpoint whose {bad} holds NaN or Inf; "
                                     "the previous checkpoints are unchanged")
        payload = {**checkpoint, DIGEST_KEY: checkpoint_digest(checkpoint)}
        atomic_write(path, lambda f: save(payload, f), what="a checkpoint")

    def attach(self, engine) -> None:
        for stale in Path(self.save_dir).glob(f".*{TEMP_SUFFIX}"):
            logger.warning("removing %s, left by a checkpoint write that was interrupted", stale)
            stale.unlink(missing_ok=True)
        super().attach(engine)

    def exception_raised(self, engine, e: Exception) -> None:
        if self.save_on_exception and not isinstance(e, (OSError, FloatingPointError)):
            super().exception_raised(engine, e)
        raise e

    def state_dict(self) -> dict:
        """Which file holds the best key metric so far, and its score."""
        saved = self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}
        return dict(saved)

    def load_state_dict(self, state_dict: Mapping) -> None:
        if self._key_metric_checkpoint is not None and state_dict:
            self._key_metric_checkpoint.load_state_dict(state_dict)


class VerifiedCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` reading through ``networks.checkpoint.load_tensors`` (``weights_only``,
    digest verified): an empty, truncated, tampered or foreign checkpoint, one missing an entry of
    ``load_dict``, or one whose entry does not fit its object (another architecture, another optimiser)
    raises ``CXRDataError`` naming the file and the entry, instead of a bare ``RuntimeError`` from deep
    inside the unpickler or ``load_state_dict``.

    Args:
        optional: entries of ``load_dict`` a checkpoint may lack (state added in a later version, such as the
            best-model tracking); those objects keep their fresh state, with a warning.
        args, kwargs: ``CheckpointLoader``'s (``strict_shape`` must stay True: skipping mismatched weights is
            what this loader exists to refuse).
    """

    def __init__(self, *args, optional: Sequence[str] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.optional = tuple(optional)

    def __call__(self, engine) -> None:
        if not self.strict_shape:
            raise ValueError("strict_shape: VerifiedCheckpointLoader loads strictly; use MONAI's "
                             "CheckpointLoader to skip weights that do not fit")
        checkpoint = load_tensors(self.load_path)
        first = next(iter(self.load_dict))
        if len(self.load_dict) == 1 and isinstance(checkpoint, Mapping) and first not in checkpoint:
            checkpoint = {first: checkpoint}  # a bare state dict for a single object, as MONAI allows
        missing = [k for k in self.load_dict if not isinstance(checkpoint, Mapping) or k not in checkpoint]
        absent = [k for k in missing if k in self.optional]
        if absent:
            self.logger.warning(f"{self.load_path}: no {absent} stored; starting those from scratch")
        missing = [k for k in missing if k not in absent]
        if missing:
            found = sorted(checkpoint) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise CXRDataError(f"expected a checkpoint with entries {list(self.load_dict)}, found {found} (a "
                               "model.pt holds weights only: start from it with finetune_from)",
                               path=self.load_path, field=missing[0])
        prior_max_epochs = engine.state.max_epochs
        for name, obj in self.load_dict.items():
            if name in absent:
                continue
            try:
                Checkpoint.load_objects(to_load={name: obj}, checkpoint=checkpoint, strict=self.strict)
            except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as e:
                found = " ".join(str(e).split())[:300]
                raise CXRDataError(f"the stored {name} does not fit this run's (another architecture or "
                                   f"configuration?): {found}", path=self.load_path, field=name) from e
        if prior_max_epochs is not None and engine.state.epoch > prior_max_epochs:
            raise CXRDataError(f"expected at most max_epochs={prior_max_epochs} epochs, found "
                               f"{engine.state.epoch} already trained", path=self.load_path, field="trainer")
        engine.state.max_epochs = prior_max_epochs
        self.logger.info(f"Restored all variables from {self.load_path}")


def checkpoint_objects(trainer: Any, **objects: Any) -> dict:
    """``save_dict`` / ``load_dict`` for ``AtomicCheckpointSaver`` and ``CheckpointLoader``: ``objects``
    (network, optimizer, lr_scheduler, curriculum handler, ...) plus the trainer and the state it owns, its
    ``expert_stream`` and, with AMP, its ``scaler``, which a hand-written dictionary easily forgets."""
    owned = {name: getattr(trainer, name, None) for name in ("expert_stream", "scaler")}
    return {**objects, "trainer": trainer, **{name: obj for name, obj in owned.items() if obj is not None}}
