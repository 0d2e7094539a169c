"""Reading network weights: the one loader, and the one policy for which checkpoint layouts are accepted.

Training writes ``{"network": ..., "optimizer": ..., "trainer": ...}`` (``checkpoint_epoch=N.pt``,
``final.pt``), its best-metric saver ``{"model": ...}``, and the bundle ships a bare state dict
(``models/model.pt``); ``DistributedDataParallel`` adds ``module.`` to every name. Evaluation, report
generation, packaging, fine-tuning, resume and the MONAI Label app all read weights through this module,
so a checkpoint that loads in one loads in all, and a damaged one is refused by all with the same message.

``weights_only`` loading refuses pickled code, but a byte flipped inside a tensor loads silently (the zip
records are not checksummed on read). Training checkpoints therefore carry ``DIGEST_KEY``, a SHA-256 of
their contents (``checkpoint_digest``) written by ``handlers.AtomicCheckpointSaver``; ``load_tensors``
verifies it when present. Files without one (the packaged bundle's bare state dict, other tools' files)
load unverified.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from eclip_monai.errors import CXRDataError

WEIGHT_KEYS = ("model", "network", "state_dict")
PROCESSOR = "heatmap_processor"
DIGEST_KEY = "sha256"


def checkpoint_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 over a checkpoint's entries (all but ``DIGEST_KEY``): tensor dtypes, shapes and bytes, and the
    ``repr`` of every other value, in order. Equal before ``torch.save`` and after a ``weights_only`` load."""
    digest = hashlib.sha256()

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, Mapping):
            digest.update(b"{")
            for key, item in value.items():
                walk(key)
                walk(item)
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                walk(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    walk({k: v for k, v in checkpoint.items() if k != DIGEST_KEY})
    return digest.hexdigest()


def load_tensors(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only`` on the CPU. A missing, empty, truncated or foreign file, pickled
    code, or contents that no longer match their ``DIGEST_KEY`` raise ``CXRDataError`` naming the file; the
    digest entry is removed from what is returned."""
    if not os.path.isfile(path):
        raise CXRDataError("file not found; expected a PyTorch checkpoint", path=path)
    if os.path.getsize(path) == 0:
        raise CXRDataError("file is empty (0 bytes); expected a PyTorch checkpoint", path=path)
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CXRDataError(f"expected a readable PyTorch checkpoint of tensors (not truncated, no pickled "
                           f"code), found {type(e).__name__}: {str(e)[:300]}", path=path) from e
    if isinstance(stored, Mapping) and isinstance(stored.get(DIGEST_KEY), str):
        stored = dict(stored)
        if stored.pop(DIGEST_KEY) != checkpoint_digest(stored):
            raise CXRDataError("expected contents matching the checkpoint's own SHA-256, found others: "
                               "the file was altered or damaged after it was written", path=path,
                               field=DIGEST_KEY)
    return stored


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
