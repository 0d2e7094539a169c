"""A persistent faiss index of training-report embeddings from eCLIP's text tower.

Encoding a report corpus is the slow part of retrieval-augmented generation, so the index is saved to a
directory and reused while neither the corpus nor the network weights change. The directory holds:

- ``reports.faiss``: the search index over the L2-normalised embeddings (inner product = cosine), of the kind
  the manifest's ``search`` names: ``{"kind": "exact"}``, a ``faiss.IndexFlatIP``, or ``{"kind": "ivf",
  "nlist", "nprobe", "seed"}``, a ``faiss.IndexIVFFlat`` (see ``eclip_monai.metrics.retrieval.build_ivf``);
- ``reports.jsonl``: one ``{"id", "report"}`` line per row of the index, in index order;
- ``manifest.json``: ``checkpoint`` (path or null), ``checkpoint_sha256`` (of the file, or of the network's
  weights when there is no file), ``corpus_sha256`` (of the ids and texts), ``size``, ``dim``, ``search`` and
  ``embeddings_sha256`` (of the float32 embeddings, to recognise an index file that is not the one the
  manifest was written with). It is written last, so a directory left half-written by a crash never passes
  for a valid index.

Both kinds store every embedding, so one can be rebuilt as the other without encoding the corpus again.
Exact search is the default below ``APPROXIMATE_MIN_CANDIDATES`` reports (``approximate="auto"``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from eclip_monai.errors import CXRDataError
from eclip_monai.integrity import file_sha256
from eclip_monai.metrics.retrieval import (
    DEFAULT_NPROBE,
    build_ivf,
    check_nprobe,
    ivf_lists,
    ivf_search,
    use_approximate,
)

INDEX_FILE, REPORTS_FILE, MANIFEST_FILE = "reports.faiss", "reports.jsonl", "manifest.json"
EXACT = {"kind": "exact"}
logger = logging.getLogger(__name__)


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


def embeddings_sha256(embeddings: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(embeddings, dtype=np.float32).data).hexdigest()


def search_settings(size: int, approximate: bool | str = "auto", nprobe: int = DEFAULT_NPROBE,
                    nlist: int | None = None, seed: int = 0) -> dict:
    """The manifest's ``search`` entry of an index of ``size`` reports built with these arguments."""
    nprobe = check_nprobe(nprobe)
    if not use_approximate(approximate, size):
        return dict(EXACT)
    nlist = ivf_lists(size) if nlist is None else nlist
    return {"kind": "ivf", "nlist": nlist, "nprobe": nprobe, "seed": seed}


def describe_faiss_index(index: faiss.Index) -> str:
    """What a faiss index file holds, in the manifest's words."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return f"an IVF index ({type(index).__name__}) with nlist {ivf.nlist}, {index.ntotal} vectors"
    return f"a {type(index).__name__} with {index.ntotal} vectors"


def matches_search(index: faiss.Index, search: dict) -> bool:
    """Whether a faiss index is of the kind (and list count) that a manifest's ``search`` entry records."""
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return False
    if search.get("kind") == "ivf":
        return isinstance(index, faiss.IndexIVFFlat) and index.nlist == search.get("nlist")
    return search.get("kind") == "exact" and isinstance(index, faiss.IndexFlat)


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
    """Report texts, their ids and a faiss index over their embeddings (row i = report i).

    Args:
        embeddings: (N, D) L2-normalised report embeddings.
        reports, ids: the N report texts and their ids (e.g. study ids).
        manifest: provenance saved with the index (see the module docstring).
        approximate: True for an IVF index (``build_ivf``), False for exact search, "auto" for IVF from
            ``APPROXIMATE_MIN_CANDIDATES`` reports on.
        nprobe: IVF lists searched per query, the recall / speed trade-off (every list = exact).
        nlist: IVF lists (default ``ivf_lists(N)``, the power of two nearest √N).
        seed: seed of the IVF's k-means (the same seed gives the same index).
    """

    def __init__(self, embeddings: np.ndarray, reports: Sequence[str], ids: Sequence[str],
                 manifest: dict | None = None, approximate: bool | str = "auto", nprobe: int = DEFAULT_NPROBE,
                 nlist: int | None = None, seed: int = 0):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or not (len(embeddings) == len(reports) == len(ids)) or not len(ids):
            raise ValueError(f"expected (N, D) embeddings for N > 0 reports and ids, found "
                             f"{embeddings.shape}, {len(reports)} reports, {len(ids)} ids")
        search = search_settings(len(ids), approximate, nprobe, nlist, seed)
        if search["kind"] == "ivf":
            index = build_ivf(embeddings, search["nlist"], seed)
        else:
            index = faiss.IndexFlatIP(embeddings.shape[1])
            index.add(embeddings)
        manifest = dict(manifest or {}, search=search, embeddings_sha256=embeddings_sha256(embeddings))
        self._assign(embeddings, reports, ids, index, manifest)

    def _assign(self, embeddings: np.ndarray, reports: Sequence[str], ids: Sequence[str], index: faiss.Index,
                manifest: dict) -> None:
        self.embeddings, self.reports, self.ids = embeddings, list(reports), [str(i) for i in ids]
        self.index = index
        self.manifest = dict(manifest, size=len(self.ids), dim=int(embeddings.shape[1]))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def search_settings(self) -> dict:
        """The manifest's ``search`` entry: ``{"kind": "exact"}``, or the IVF's ``nlist``, ``nprobe`` and
        ``seed``."""
        return self.manifest.get("search", EXACT)

    def search(self, queries: np.ndarray | torch.Tensor, k: int,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and row indices, (Q, k) each, best first (k is capped at the index size). An IVF
        index searches ``nprobe`` lists per query (default: the manifest's); row -1 pads a query whose lists
        hold fewer than k reports."""
        if isinstance(queries, torch.Tensor):
            queries = queries.detach().float().cpu().numpy()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"expected (Q, {self.embeddings.shape[1]}) query embeddings, found "
                             f"{queries.shape}")
        k = min(k, len(self))
        if self.search_settings["kind"] == "ivf":
            nprobe = self.search_settings["nprobe"] if nprobe is None else nprobe
            scores, rows = ivf_search(self.index, queries, k, nprobe)
            return scores.numpy(), rows.numpy()
        return self.index.search(queries, k)

    @classmethod
    def build(cls, network: nn.Module, tokenizer, reports: Sequence[str], ids: Sequence[str] | None = None,
              batch_size: int = 64, device: str | torch.device | None = None,
              manifest: dict | None = None, **search) -> ReportIndex:
        """Encode ``reports`` with ``network.encode_text`` and index them (ids default to row numbers);
        ``search``: ``approximate``, ``nprobe``, ``nlist``, ``seed`` as for the constructor."""
        ids = [str(i) for i in range(len(reports))] if ids is None else ids
        return cls(embed_reports(network, tokenizer, reports, batch_size, device), reports, ids, manifest,
                   **search)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MANIFEST_FILE).unlink(missing_ok=True)  # invalid until everything else is written
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        with open(directory / REPORTS_FILE, "w", encoding="utf-8") as handle:
            for report_id, text in zip(self.ids, self.reports):
                handle.write(json.dumps({"id": report_id, "report": text}) + "\n")
        self._write_manifest(directory)

    def _write_manifest(self, directory: Path) -> None:
        partial = directory / f"{MANIFEST_FILE}.partial"
        partial.write_text(json.dumps(self.manifest, indent=2))
        partial.replace(directory / MANIFEST_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike, nprobe: int | None = None) -> ReportIndex:
        """The saved index, searched with ``nprobe`` lists per query when it is an IVF (default: as saved).

        Raises ``CXRDataError`` naming the file when there is no manifest, or when ``reports.faiss`` is not
        the index the manifest describes: another kind or list count, another size, or other vectors (an
        index file from another build).
        """
        directory = Path(directory)
        manifest_path, index_path = directory / MANIFEST_FILE, directory / INDEX_FILE
        if not manifest_path.is_file():
            raise CXRDataError("no report index here; expected manifest.json (build the index first)",
                               path=manifest_path)
        manifest = json.loads(manifest_path.read_text())
        search = dict(manifest.get("search", EXACT))  # indexes saved before approximate search are exact
        if nprobe is not None and search.get("kind") == "ivf":
            search["nprobe"] = check_nprobe(nprobe)
        if not index_path.is_file():
            raise CXRDataError("expected the index file that manifest.json describes, found none",
                               path=index_path)
        index = faiss.read_index(str(index_path))
        if not matches_search(index, search):
            raise CXRDataError(f"expected the index manifest.json describes ({search}), found "
                               f"{describe_faiss_index(index)}; rebuild the index", path=index_path,
                               field="search")
        lines = (directory / REPORTS_FILE).read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines]
        if not (index.ntotal == len(rows) == manifest.get("size")):
            raise CXRDataError(f"expected {manifest.get('size')} reports (manifest), found {len(rows)} lines "
                               f"and {index.ntotal} vectors", path=directory / REPORTS_FILE)
        if search["kind"] == "ivf":
            index.make_direct_map()  # reconstruct by id
        embeddings = index.reconstruct_n(0, index.ntotal)
        if manifest.get("embeddings_sha256") not in (None, embeddings_sha256(embeddings)):
            raise CXRDataError("expected the vectors manifest.json was written with, found others: the "
                               "index file is stale or from another build; rebuild the index",
                               path=index_path, field="embeddings_sha256")
        loaded = cls.__new__(cls)
        loaded._assign(embeddings, [r["report"] for r in rows], [r["id"] for r in rows], index,
                       dict(manifest, search=search))
        return loaded

    @classmethod
    def load_or_build(cls, directory: str | os.PathLike, network: nn.Module, tokenizer,
                      reports: Sequence[str], checkpoint_path: str | os.PathLike | None = None,
                      ids: Sequence[str] | None = None, batch_size: int = 64,
                      device: str | torch.device | None = None, approximate: bool | str = "auto",
                      nprobe: int = DEFAULT_NPROBE, nlist: int | None = None, seed: int = 0) -> ReportIndex:
        """The saved index in ``directory`` when its corpus and checkpoint match, else a fresh one (saved).

        A saved index of another search kind, ``nlist`` or ``seed`` is rebuilt from its stored embeddings
        (the corpus is not encoded again); another ``nprobe`` only rewrites the manifest. A saved index that
        does not load (its index file does not match its manifest) is rebuilt from the corpus.
        """
        ids = [str(i) for i in range(len(reports))] if ids is None else [str(i) for i in ids]
        wanted = search_settings(len(reports), approximate, nprobe, nlist, seed)
        no_file = checkpoint_path is None
        manifest = {
            "checkpoint": None if no_file else os.fspath(checkpoint_path),
            "checkpoint_sha256": weights_sha256(network) if no_file else file_sha256(checkpoint_path),
            "corpus_sha256": corpus_sha256(reports, ids),
        }
        directory = Path(directory)
        saved = directory / MANIFEST_FILE
        if saved.is_file():
            old = json.loads(saved.read_text())
            if all(old.get(key) == manifest[key] for key in ("checkpoint_sha256", "corpus_sha256")):
                try:
                    index = cls.load(directory)
                except CXRDataError as error:
                    logger.warning("rebuilding the report index: %s", error)
                else:
                    return index._with_search(directory, wanted)
        index = cls.build(network, tokenizer, reports, ids, batch_size, device, manifest,
                          approximate=approximate, nprobe=nprobe, nlist=nlist, seed=seed)
        index.save(directory)
        return index

    def _with_search(self, directory: Path, wanted: dict) -> ReportIndex:
        """This loaded index searching as ``wanted``: the same, its ``nprobe`` changed, or rebuilt from its
        embeddings; saved to ``directory`` when anything changed."""
        have = self.search_settings
        if have == wanted:
            return self
        if {**have, "nprobe": None} == {**wanted, "nprobe": None}:
            self.manifest["search"] = wanted
            self._write_manifest(directory)
            return self
        logger.info("re-indexing the saved report embeddings: %s instead of %s", wanted, have)
        keep = {key: value for key, value in self.manifest.items() if key not in ("search", "size", "dim")}
        ivf = {key: wanted[key] for key in ("nprobe", "nlist", "seed") if key in wanted}
        index = type(self)(self.embeddings, self.reports, self.ids, keep, wanted["kind"] == "ivf", **ivf)
        index.save(directory)
        return index
