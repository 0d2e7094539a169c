"""Checkpoints that are never half-written, holding everything an exact resume needs."""

from __future__ import annotations

from typing import Any

from monai.handlers import CheckpointSaver


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes: each file is written under a temporary name in
    ``save_dir`` and renamed into place, so a crash or a kill during a save never leaves a truncated file
    under a checkpoint's name for ``CheckpointLoader`` to choke on.

    MONAI builds Ignite's ``DiskSaver`` with ``atomic=False`` because older Ignite left atomically written
    files readable by their owner only; Ignite 0.5.5 adds group/other read permission after the rename, so
    atomic writes cost nothing here. Arguments are ``CheckpointSaver``'s.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True


def checkpoint_objects(trainer: Any, **objects: Any) -> dict:
    """``save_dict`` / ``load_dict`` for ``AtomicCheckpointSaver`` and ``CheckpointLoader``: ``objects``
    (network, optimizer, lr_scheduler, curriculum handler, ...) plus the trainer and the state it owns, its
    ``expert_stream`` and, with AMP, its ``scaler``, which a hand-written dictionary easily forgets."""
    owned = {name: getattr(trainer, name, None) for name in ("expert_stream", "scaler")}
    return {**objects, "trainer": trainer, **{name: obj for name, obj in owned.items() if obj is not None}}
