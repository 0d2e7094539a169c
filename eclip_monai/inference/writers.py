"""Per-image result files: ``<name>_findings.json`` (finding probabilities) and ``<name>_embedding.npy``.

One pair of files per input, named after it (see ``inputs.image_stem``), so results can be matched to images
without a join and a run that stops half-way keeps everything written so far. Each file is written under a
temporary name and renamed (``files.atomic_write``), so a reader never sees half a file, and a full disk or a
read-only folder raises an ``OSError`` naming the file instead of leaving part of one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from eclip_monai.errors import CXRDataError
from eclip_monai.files import atomic_write
from eclip_monai.inference.inputs import image_stem

__all__ = ["SaveFindingsd"]


class SaveFindingsd(MapTransform):
    """Write one decollated item's finding probabilities (JSON) and image embedding (``.npy``).

    Args:
        keys: the key of the (F,) probabilities.
        findings: the F finding names, in the network's output order.
        output_dir: folder for the result files (created if absent).
        embedding_key: the key of the (D,) embedding; None writes no embedding.
        image_key: the key of the input image, whose ``filename_or_obj`` names the outputs.
    """

    def __init__(self, keys: KeysCollection, findings: Sequence[str], output_dir: str | os.PathLike,
                 embedding_key: str | None = "embedding", image_key: str = "image"):
        super().__init__(keys)
        self.findings = list(findings)
        self.output_dir = Path(output_dir)
        self.embedding_key, self.image_key = embedding_key, image_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        source = str(getattr(d[self.image_key], "meta", {}).get("filename_or_obj", ""))
        if not source:
            raise CXRDataError("expected the input image's file name in its metadata (filename_or_obj), "
                               "found none", field=self.image_key)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem = image_stem(source)
        for key in self.key_iterator(d):
            probabilities = convert_to_numpy(d[key]).astype(float).reshape(-1)
            if probabilities.size != len(self.findings):
                raise CXRDataError(f"expected {len(self.findings)} probabilities (one per finding), found "
                                   f"{probabilities.size}", path=source, field=str(key))
            result = {"image": source, "findings": dict(zip(self.findings, probabilities.tolist()))}
            if self.embedding_key is not None:
                embedding = convert_to_numpy(d[self.embedding_key]).astype(np.float32).reshape(-1)
                result["embedding"] = f"{stem}_embedding.npy"
                self._write(f"{stem}_embedding.npy", lambda f: np.save(f, embedding))
            self._write(f"{stem}_findings.json", lambda f: f.write(json.dumps(result, indent=2).encode()))
        return d

    def _write(self, name: str, write) -> None:
        atomic_write(self.output_dir / name, write, "an inference result", durable=False)
