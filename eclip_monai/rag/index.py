"""A persistent faiss index of training-report embeddings from eCLIP's text tower.

Encoding a report corpus is the slow part of retrieval-augmented generation, so the index is saved to a
directory and reused while neither the corpus nor the network weights change. The directory holds:

- ``reports.faiss``: ``faiss.IndexFlatIP`` over the L2-normalised embeddings (inner product = cosine);
- ``reports.jsonl``: one ``{"id", "report"}`` line per row of the index, in index order;
- ``manifest.json``: ``checkpoint`` (path or null), ``checkpoint_sha256`` (of the file, or of the network's
  weights when there is no file), ``corpus_sha256`` (of the ids and texts), ``size`` and ``dim``. It is
  written last, so a directory left half-written by a crash never passes for a valid index.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eclip_monai.errors import CXRDataError

INDEX_FILE, REPORTS_FILE, MANIFEST_FILE = "reports.faiss", "reports.jsonl", "manifest.json"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(network: nn.Module) -> str:
    """SHA-256 of a network's state dict (names and raw bytes): identifies weights that came from no file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def corpus_sha256(reports: Sequence[str], ids: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for report_id, text in zip(ids, reports):
        digest.update(json.dumps([report_id, text]).encode())
    return digest.hexdigest()


def network_device(network: nn.Module) -> torch.device:
    """Where the network's parameters live (CPU for a network without any)."""
    return next((p.device for p in network.parameters()), torch.device("cpu"))


@torch.no_grad()
def embed_reports(network: nn.Module, tokenizer, reports: Sequence[str], batch_size: int = 64,
                  device: str | torch.device | None = None) -> np.ndarray:
    """(N, D) float32 L2-normalised text embeddings, ``batch_size`` reports at a time."""
    device = torch.device(device) if device is not None else network_device(network)
    network.eval()
    chunks = []
    for start in tqdm(range(0, len(reports), batch_size), desc="encoding reports", unit="batch"):
        tokens = tokenizer(list(reports[start : start + batch_size])).to(device)
        chunks.append(network.encode_text(tokens).float().cpu())
    return torch.nn.functional.normalize(torch.cat(chunks), dim=-1).numpy()


class ReportIndex:
    """Report texts, their ids and a ``faiss.IndexFlatIP`` over their embeddings (row i = report i).

    Args:
        embeddings: (N, D) L2-normalised report embeddings.
        reports, ids: the N report texts and their ids (e.g. study ids).
        manifest: provenance saved with the index (see the module docstring).
    """

    def __init__(self, embeddings: np.ndarray, reports: Sequence[str], ids: Sequence[str],
                 manifest: dict | None = None):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or not (len(embeddings) == len(reports) == len(ids)) or not len(ids):
            raise ValueError(f"expected (N, D) embeddings for N > 0 reports and ids, found "
                             f"{embeddings.shape}, {len(reports)} reports, {len(ids)} ids")
        self.embeddings, self.reports, self.ids = embeddings, list(reports), [str(i) for i in ids]
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(embeddings)
        self.manifest = dict(manifest or {}, size=len(ids), dim=int(embeddings.shape[1]))

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and row indices, (Q, k) each, best first (k is capped at the index size)."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"expected (Q, {self.embeddings.shape[1]}) query embeddings, found "
                             f"{queries.shape}")
        return self.index.search(queries, min(k, len(self)))

    @classmethod
    def build(cls, network: nn.Module, tokenizer, reports: Sequence[str], ids: Sequence[str] | None = None,
              batch_size: int = 64, device: str | torch.device | None = None,
              manifest: dict | None = None) -> ReportIndex:
        """Encode ``reports`` with ``network.encode_text`` and index them (ids default to row numbers)."""
        ids = [str(i) for i in range(len(reports))] if ids is None else ids
        return cls(embed_reports(network, tokenizer, reports, batch_size, device), reports, ids, manifest)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)  # invalid until everything else is written
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        with open(directory / REPORTS_FILE, "w", encoding="utf-8") as handle:
            for report_id, text in zip(self.ids, self.reports):
                handle.write(json.dumps({"id": report_id, "report": text}) + "\n")
        partial = directory / f"{MANIFEST_FILE}.partial"
        partial.write_text(json.dumps(self.manifest, indent=2))
        partial.replace(directory / MANIFEST_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ReportIndex:
        directory = Path(directory)
        manifest_path = directory / MANIFEST_FILE
        if not manifest_path.is_file():
            raise CXRDataError("no report index here; expected manifest.json (build the index first)",
                               path=manifest_path)
        manifest = json.loads(manifest_path.read_text())
        index = faiss.read_index(str(directory / INDEX_FILE))
        lines = (directory / REPORTS_FILE).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        if not (index.ntotal == len(rows) == manifest.get("size")):
            raise CXRDataError(f"expected {manifest.get('size')} reports (manifest), found {len(rows)} lines "
                               f"and {index.ntotal} vectors", path=directory / REPORTS_FILE)
        embeddings = index.reconstruct_n(0, index.ntotal)
        return cls(embeddings, [r["report"] for r in rows], [r["id"] for r in rows], manifest)

    @classmethod
    def load_or_build(cls, directory: str | os.PathLike, network: nn.Module, tokenizer,
                      reports: Sequence[str], checkpoint_path: str | os.PathLike | None = None,
                      ids: Sequence[str] | None = None, batch_size: int = 64,
                      device: str | torch.device | None = None) -> ReportIndex:
        """The saved index in ``directory`` when its corpus and checkpoint match, else a fresh one (saved)."""
        ids = [str(i) for i in range(len(reports))] if ids is None else [str(i) for i in ids]
        no_file = checkpoint_path is None
        manifest = {
            "checkpoint": None if no_file else os.fspath(checkpoint_path),
            "checkpoint_sha256": weights_sha256(network) if no_file else file_sha256(checkpoint_path),
            "corpus_sha256": corpus_sha256(reports, ids),
        }
        saved = Path(directory) / MANIFEST_FILE
        if saved.is_file():
            old = json.loads(saved.read_text())
            if all(old.get(key) == manifest[key] for key in ("checkpoint_sha256", "corpus_sha256")):
                return cls.load(directory)
        index = cls.build(network, tokenizer, reports, ids, batch_size, device, manifest)
        index.save(directory)
        return index
