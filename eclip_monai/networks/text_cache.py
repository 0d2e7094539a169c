"""Cached features of a locked (frozen) Hugging Face text tower.

With the text encoder locked, LiT-style, a report's pooled encoder output never changes during training: only
the projection after it learns. Computing that output once per distinct report, instead of at every step,
removes the text tower from the step's cost, which is what makes training with a real pretrained text tower
(e.g. all-MiniLM-L6-v2 or Bio_ClinicalBERT from a local directory) affordable on a CPU. The cache returns
exactly what the locked encoder computes in eval mode (no dropout), so a cached and an uncached forward agree.

The cache is not an ``nn.Module``: it holds no parameters and adds no ``state_dict`` keys, so checkpoints of a
network with and without it are interchangeable. Given a ``path``, it is also kept on disk (written atomically,
tagged with a fingerprint of the trunk's weights) so that the runs of a study encode each report only once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from eclip_monai.errors import CXRDataError
from eclip_monai.networks.checkpoint import load_tensors

logger = logging.getLogger(__name__)

__all__ = ["FrozenTextCache"]


class FrozenTextCache:
    """Pooled outputs of a locked open_clip ``HFTextEncoder`` trunk, one per distinct token row.

    Args:
        text_tower: the ``HFTextEncoder`` (``clip.text``) whose ``transformer`` and ``pooler`` are frozen.
        max_entries: bound on cached rows (a MIMIC-size report set is ~230k rows of 384-768 floats); the
            oldest entries are dropped first.
        path: optional file that keeps the cache between processes; entries computed by a trunk with other
            weights (another fingerprint) are ignored.
    """

    def __init__(self, text_tower: nn.Module, max_entries: int = 500_000, path: str | os.PathLike | None = None):
        if not all(hasattr(text_tower, name) for name in ("transformer", "pooler", "proj", "config")):
            raise TypeError(
                f"expected an open_clip HFTextEncoder (a Hugging Face text tower), found {type(text_tower).__name__}; "
                "the feature cache needs a locked Hugging Face trunk"
            )
        trainable = [n for n, p in text_tower.transformer.named_parameters() if p.requires_grad]
        if trainable:
            raise ValueError(
                f"the text trunk must be fully locked to cache its features; trainable: {trainable[:3]}..."
            )
        self.tower = text_tower
        self.max_entries = max_entries
        self._features: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0
        self.path = None if path is None else Path(path)
        # hashing the trunk's weights costs a pass over them: only a cache kept on disk needs it
        self.fingerprint = None if self.path is None else _fingerprint(text_tower.transformer)
        if self.path is not None and self.path.is_file():
            self._load()

    def __len__(self) -> int:
        return len(self._features)

    @torch.no_grad()
    def pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids → (B, width) pooled trunk output, computing only rows not seen before."""
        keys = [row.tobytes() for row in tokens.detach().cpu().numpy()]
        missing = list(dict.fromkeys(k for k in keys if k not in self._features))
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            rows = tokens[[first[k] for k in missing]]
            for key, feature in zip(missing, self._encode(rows)):
                self._features[key] = feature
            while len(self._features) > self.max_entries:
                self._features.pop(next(iter(self._features)))
            if self.path is not None:
                self.save()
        return torch.stack([self._features[k] for k in keys]).to(tokens.device)

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """Projected text features (B, embed_dim): cached trunk output through the trainable projection."""
        pooled = self.pooled(tokens)
        return self.tower.proj(pooled)

    def save(self) -> None:
        """Write the cache to ``path`` under a temporary name, then rename it into place."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        keys = list(self._features)
        torch.save({"fingerprint": self.fingerprint, "keys": keys,
                    "features": torch.stack([self._features[k] for k in keys])}, tmp)
        os.replace(tmp, self.path)

    def _load(self) -> None:
        try:
            stored = load_tensors(self.path)
        except CXRDataError as e:  # a damaged cache only costs recomputation
            logger.warning("ignoring the text feature cache %s: unreadable (%s)", self.path, e)
            return
        if stored.get("fingerprint") != self.fingerprint:
            logger.warning("ignoring the text feature cache %s: written by a text trunk with other weights",
                           self.path)
            return
        self._features.update(zip(stored["keys"], stored["features"]))

    def _encode(self, rows: torch.Tensor) -> torch.Tensor:
        trunk = self.tower.transformer
        was_training = trunk.training
        trunk.eval()
        try:
            mask = (rows != self.tower.config.pad_token_id).long()
            out = trunk(input_ids=rows, attention_mask=mask)
            return self.tower.pooler(out, mask).float().cpu()
        finally:
            trunk.train(was_training)


def _fingerprint(module: nn.Module) -> str:
    """A digest of the trunk's weights, so a cache file is used only by the trunk that wrote it."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()
