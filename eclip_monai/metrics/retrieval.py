"""Cross-modal retrieval recall, chunked so that the full similarity matrix is never held in memory.

Relevance is by *group*: a query hits at k when any of its top-k candidates shares its group id. For
image→text retrieval over unique reports the group of an image is the id of its report text; for text→image
the group of a unique report is the same id, and every image with that report is relevant. Group ids are
integers (``report_group_id`` hashes report text) so they can be all-gathered under ``torch.distributed``.

Two exact top-k searches give the same neighbours (up to the order of tied scores): ``chunked_topk`` in torch
(any device) and ``faiss_topk``, faiss's flat inner-product search (``IndexFlatIP``'s kernel). Both hold one
block of similarities at a time (faiss blocks internally), never the full queries × candidates matrix.
``topk_search(backend="auto")`` picks faiss for large CPU searches, where ``scripts/bench_retrieval.py``
measures it faster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import faiss
import numpy as np
import torch

from eclip_monai.metrics.gathered import GatheredMetric

FAISS_MIN_PAIRS = 1_000_000  # queries × candidates from which faiss beats the torch loop on CPU (measured)


def report_group_id(text: str) -> int:
    """Stable 63-bit id of a report's whitespace-normalised text (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@torch.no_grad()
def chunked_topk(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    query_chunk: int = 1024,
    candidate_chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product scores and indices of each query, holding at most one
    ``query_chunk × candidate_chunk`` block of similarities at a time (16 MiB by default) plus the running
    top-k.

    The matrix product is the cost to pay (2·Q·N·D FLOPs); the top-k must stay small beside it. A block's
    row maximum is a cheap vectorised pass, and only rows whose maximum beats their running k-th best score
    (for candidates in random order, about k/j of the rows at the j-th block) are top-k'd and merged, so
    after the first blocks most of the block is never sorted. Ties keep the earlier candidate. Query
    blocks of 1024 rows keep the product efficient (the candidates are streamed once per block).
    """
    n = candidates.shape[0]
    k = min(k, n)
    out_v = queries.new_empty((queries.shape[0], k))
    out_i = torch.empty((queries.shape[0], k), dtype=torch.long, device=queries.device)
    for q0 in range(0, queries.shape[0], query_chunk):
        q = queries[q0 : q0 + query_chunk]
        best_v = best_i = None
        for c0 in range(0, n, candidate_chunk):
            sims = q @ candidates[c0 : c0 + candidate_chunk].T
            rows = None  # all rows
            if best_v is not None and best_v.shape[1] == k:
                rows = (sims.amax(dim=1) > best_v[:, -1]).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                if rows.numel() == sims.shape[0]:
                    rows = None
                else:
                    sims = sims.index_select(0, rows)
            v, i = sims.topk(min(k, sims.shape[1]), dim=1)
            i += c0
            if best_v is None:
                best_v, best_i = v, i
                continue
            old_v = best_v if rows is None else best_v.index_select(0, rows)
            old_i = best_i if rows is None else best_i.index_select(0, rows)
            merged_v, order = torch.cat([old_v, v], 1).topk(min(k, old_v.shape[1] + v.shape[1]), dim=1)
            merged_i = torch.cat([old_i, i], 1).gather(1, order)
            if rows is None:
                best_v, best_i = merged_v, merged_i
            else:
                best_v[rows], best_i[rows] = merged_v, merged_i
        if best_v is not None:  # None only without candidates (k = 0)
            out_v[q0 : q0 + q.shape[0]], out_i[q0 : q0 + q.shape[0]] = best_v, best_i
    return out_v, out_i


@torch.no_grad()
def faiss_topk(queries: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product scores and indices by faiss's exact flat search (CPU, float32), on as many
    threads as torch uses; results come back on the queries' device.

    ``faiss.knn`` runs the search of a ``faiss.IndexFlatIP`` without first copying the candidates into an
    index, which would cost another N × D × 4 bytes (2 GiB for a million 512-d candidates).
    """
    k = min(k, candidates.shape[0])
    faiss.omp_set_num_threads(torch.get_num_threads())
    query_array, candidate_array = (np.ascontiguousarray(x.detach().float().cpu().numpy())
                                    for x in (queries, candidates))
    scores, idx = faiss.knn(query_array, candidate_array, k, metric=faiss.METRIC_INNER_PRODUCT)
    return torch.from_numpy(scores).to(queries.device), torch.from_numpy(idx).long().to(queries.device)


def topk_search(
    queries: torch.Tensor, candidates: torch.Tensor, k: int, backend: str = "auto", **chunk_kwargs
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` by inner product with ``backend`` "torch" (:func:`chunked_topk`), "faiss"
    (:func:`faiss_topk`) or "auto": faiss for CPU tensors with at least ``FAISS_MIN_PAIRS`` query-candidate
    pairs, torch otherwise (GPU tensors stay on the GPU)."""
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if backend == "auto":
        large = queries.shape[0] * candidates.shape[0] >= FAISS_MIN_PAIRS
        backend = "faiss" if large and queries.device.type == candidates.device.type == "cpu" else "torch"
    if backend == "faiss":
        return faiss_topk(queries, candidates, k)
    return chunked_topk(queries, candidates, k, **chunk_kwargs)


def recall_at_k(
    queries: torch.Tensor,
    query_groups: torch.Tensor,
    candidates: torch.Tensor,
    candidate_groups: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    backend: str = "auto",
    **chunk_kwargs,
) -> dict[int, float]:
    """Fraction of queries with a same-group candidate among their top-k, for each k in ``ks``."""
    _, idx = topk_search(queries, candidates, max(ks), backend, **chunk_kwargs)
    hits = candidate_groups.to(idx.device)[idx] == query_groups.to(idx.device)[:, None]
    return {k: hits[:, :k].any(1).double().mean().item() for k in ks}


def unique_by_group(features: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First feature row of each distinct group (duplicate reports are one retrieval candidate)."""
    uniq, inverse = torch.unique(groups, return_inverse=True)
    first = torch.full((uniq.numel(),), groups.numel(), dtype=torch.long, device=groups.device)
    first.scatter_reduce_(0, inverse, torch.arange(groups.numel(), device=groups.device), reduce="amin")
    return features[first], uniq


def cross_modal_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    groups: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    backend: str = "auto",
) -> dict[str, float]:
    """Image→text R@k over unique reports and text→image R@k over all images (``i2t_R@k``, ``t2i_R@k``)."""
    texts, text_groups = unique_by_group(text_features, groups)
    i2t = recall_at_k(image_features, groups, texts, text_groups, ks, backend)
    t2i = recall_at_k(texts, text_groups, image_features, groups, ks, backend)
    return {**{f"i2t_R@{k}": v for k, v in i2t.items()}, **{f"t2i_R@{k}": v for k, v in t2i.items()}}


class CrossModalRecall(GatheredMetric):
    """Ignite metric: R@k of image→text (``direction="i2t"``), text→image (``"t2i"``) or their mean ("mean").

    Expects the engine output (after ``output_transform``) to be ``(image_features, text_features, groups)``.
    Features are gathered from all ranks before scoring, so the value is the same under DDP as on one process.
    """

    def __init__(self, k: int = 1, direction: str = "mean", output_transform=lambda x: x, device="cpu"):
        if direction not in ("i2t", "t2i", "mean"):
            raise ValueError(f"direction must be 'i2t', 't2i' or 'mean', got {direction!r}")
        self.k, self.direction = k, direction
        super().__init__(output_transform=output_transform, device=device)

    def compute(self) -> float:
        img, txt, grp = self.gathered()
        scores = cross_modal_recall(img, txt, grp.long(), ks=(self.k,))
        i2t, t2i = scores[f"i2t_R@{self.k}"], scores[f"t2i_R@{self.k}"]
        return {"i2t": i2t, "t2i": t2i, "mean": (i2t + t2i) / 2}[self.direction]
