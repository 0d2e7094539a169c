"""Reading network weights: the one loader, and the one policy for which checkpoint layouts are accepted.

Training writes ``{"network": ..., "optimizer": ..., "trainer": ...}`` (``checkpoint_epoch=N.pt``,
``final.pt``), its best-metric saver ``{"model": ...}``, and the bundle ships a bare state dict
(``models/model.pt``); ``DistributedDataParallel`` adds ``module.`` to every name. Evaluation, report
generation, packaging, fine-tuning and the MONAI Label app all read weights through this module, so a
checkpoint that loads in one loads in all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eclip_monai.errors import CXRDataError

WEIGHT_KEYS = ("model", "network", "state_dict")
PROCESSOR = "heatmap_processor"


def load_tensors(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only`` on the CPU; a missing, truncated or foreign file raises
    ``CXRDataError`` naming it."""
    if not os.path.isfile(path):
        raise CXRDataError("file not found; expected a PyTorch checkpoint", path=path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CXRDataError(f"expected a readable PyTorch checkpoint of tensors, found {type(e).__name__}: "
                           f"{str(e)[:300]}", path=path) from e


def read_state_dict(path: str | os.PathLike, key: str | None = None, *, mmap: bool = False
                    ) -> dict[str, torch.Tensor]:
    """The network weights in a checkpoint: under ``key``, or (``None``) a bare state dict or the first of
    ``WEIGHT_KEYS`` present; ``DistributedDataParallel``'s ``module.`` prefix is dropped."""
    stored = load_tensors(path, mmap=mmap)
    keys = WEIGHT_KEYS if key is None else (key,)
    state = stored
    if isinstance(stored, Mapping):
        state = next((stored[k] for k in keys if isinstance(stored.get(k), Mapping)), stored)
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CXRDataError(f"expected a state dict of tensors, bare or under {' or '.join(map(repr, keys))}",
                           path=path, field=keys[0])
    return {name.removeprefix("module."): value for name, value in state.items()}


def has_processor(state: Mapping[str, Any]) -> bool:
    """Whether eCLIP weights include a heatmap processor (an eCLIP run) or not (a CLIP baseline)."""
    return any(name.startswith(PROCESSOR + ".") for name in state)


def load_weights(network: nn.Module, path: str | os.PathLike, key: str | None = None,
                 exclude: Sequence[str] = ()) -> nn.Module:
    """Load a checkpoint's weights into ``network`` (in place) and return it.

    Strict for every submodule except those named in ``exclude`` (e.g. ``["heatmap_processor"]``): their
    weights are neither read from the checkpoint nor required of it, so they keep the network's own values.
    Weights of another architecture raise ``CXRDataError`` naming the file and the mismatch.
    """
    prefixes = tuple(f"{name}." for name in exclude)
    state = {k: v for k, v in read_state_dict(path, key).items() if not k.startswith(prefixes)}
    try:
        missing, unexpected = network.load_state_dict(state, strict=False)
        problem = ""
    except RuntimeError as e:  # shapes that differ
        missing, unexpected, problem = [], [], str(e).splitlines()[-1].strip()
    missing = [k for k in missing if not k.startswith(prefixes)]
    if missing and all(k.startswith(PROCESSOR + ".") for k in missing) and not unexpected:
        raise CXRDataError(f"the checkpoint has no {PROCESSOR} (a CLIP baseline?); exclude it to start the "
                           f"network's own (restore_heatmap_processor false)", path=path, field=key or "model")
    if missing or unexpected or problem:
        found = problem or f"missing {missing[:4]}, unexpected {unexpected[:4]}"
        raise CXRDataError(f"the weights do not fit the network (check model_name / image_size / experts / "
                           f"hf_model_name): {found}", path=path, field=key or "model")
    return network
