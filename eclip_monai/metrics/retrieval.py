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

Past a few hundred thousand candidates exact search is GEMM-bound (2·Q·N·D FLOPs: 89 s for 5,000 queries × 1M
512-d candidates on two cores). The approximate alternative is an inverted-file index (:func:`build_ivf`,
faiss ``IndexIVFFlat`` with inner product): seeded spherical k-means splits the candidates into ``nlist``
lists, and a query scores only the candidates of its ``nprobe`` nearest lists, exactly. ``nprobe`` is the
one knob: more lists searched, higher recall, slower (every list = exact). :func:`ivf_search` groups the
queries by list so each list is scored by one matrix product instead of once per query. Metrics stay
exact: :func:`recall_at_k` and :func:`cross_modal_recall` never approximate, so a score never depends on an
index's parameters; ``topk_search(approximate=...)`` and the report index (``eclip_monai.rag.index``) opt in.

The defaults come from ``scripts/bench_retrieval.py`` (5,000 queries, clustered 512-d vectors, two cores;
docs/performance.md). ``DEFAULT_NPROBE = 16`` is the smallest power of two with recall@10 >= 0.95 at 1M
candidates (0.984 in 0.9-2.0 s against 29-74 s exact, idle to loaded machine; 8 lists: 0.943).
``approximate="auto"`` switches at ``APPROXIMATE_MIN_CANDIDATES = 500_000``. Exact search grows linearly
with the candidates (300k: 9-22 s per 5,000 queries and 57-116 ms per query; 1M: 29-74 s and 163-372 ms), so
below 500k it costs at most tens of seconds per batch and about 0.2 s per query, little beside the seconds
an LLM spends per report, and MIMIC-CXR's training reports (about 220k) keep their exact neighbours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import faiss
import numpy as np
import torch

from eclip_monai.metrics.gathered import GatheredMetric

FAISS_MIN_PAIRS = 1_000_000  # queries × candidates from which faiss beats the torch loop on CPU (measured)
APPROXIMATE_MIN_CANDIDATES = 500_000  # approximate="auto" uses the IVF index from here on (see above)
DEFAULT_NPROBE = 16  # lists searched per query (see above)
IVF_TRAIN_POINTS_PER_LIST = 64  # k-means sample per list (faiss's default 256 makes training 4x slower)
IVF_MIN_POINTS_PER_LIST = 39  # fewer training points per list than this and faiss warns of poor centroids
GROUPED_MIN_QUERIES_PER_LIST = 8  # from here on ivf_search groups queries by list (faster, measured)


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


def ivf_lists(n: int) -> int:
    """Default list count of an IVF index over ``n`` vectors: the power of two nearest √n (1,024 for a
    million), fewer when there would be under ``IVF_MIN_POINTS_PER_LIST`` vectors per list to train on.

    More lists make each one shorter but cost build time (k-means and the assignment scale with n × nlist)
    and need more of them probed for the same recall: on the benchmark's 1M vectors and a loaded machine,
    2,048 lists took 72 s to build where 1,024 took 27 s, and were not faster at the same recall (nprobe 32:
    0.988 in 2.7 s; 1,024 lists, nprobe 16: 0.984 in 2.0 s).
    """
    if n < 1:
        raise ValueError(f"expected at least one vector to index, got {n}")
    nlist = 1 << round(np.log2(n) / 2)
    while nlist > 1 and n < nlist * IVF_MIN_POINTS_PER_LIST:
        nlist //= 2
    return nlist


def check_nprobe(nprobe: int) -> int:
    if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
        raise ValueError(f"nprobe (lists searched per query) must be a positive integer, got {nprobe!r}")
    return int(nprobe)


def use_approximate(approximate: bool | str, candidates: int) -> bool:
    """Whether a search over ``candidates`` vectors is approximate: ``approximate`` True, False, or "auto"
    (from ``APPROXIMATE_MIN_CANDIDATES`` candidates on)."""
    if approximate == "auto":
        return candidates >= APPROXIMATE_MIN_CANDIDATES
    if not isinstance(approximate, bool):
        raise ValueError(f"approximate must be True, False or 'auto', got {approximate!r}")
    return approximate


def _float32_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def build_ivf(vectors: torch.Tensor | np.ndarray, nlist: int | None = None,
              seed: int = 0) -> faiss.IndexIVFFlat:
    """A faiss ``IndexIVFFlat`` (inner product) over ``vectors`` (N, D), row i stored under id i.

    The lists come from spherical k-means (the centroids stay unit vectors, as the data are) on a seeded
    sample of ``IVF_TRAIN_POINTS_PER_LIST`` × ``nlist`` rows, so the same vectors, ``nlist`` and ``seed``
    give the same index on the same number of threads.

    Args:
        vectors: (N, D) candidates, L2-normalised for cosine similarity.
        nlist: number of lists (default :func:`ivf_lists`); at most N.
        seed: seed of the k-means sample and initialisation.
    """
    vectors = _float32_array(vectors)
    if vectors.ndim != 2 or not len(vectors):
        raise ValueError(f"expected (N, D) vectors with N > 0, got shape {vectors.shape}")
    nlist = ivf_lists(len(vectors)) if nlist is None else nlist
    if isinstance(nlist, bool) or not isinstance(nlist, (int, np.integer)) or not 1 <= nlist <= len(vectors):
        raise ValueError(f"nlist (IVF lists) must be an integer from 1 to the {len(vectors)} vectors, "
                         f"got {nlist!r}")
    faiss.omp_set_num_threads(torch.get_num_threads())
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], int(nlist),
                               faiss.METRIC_INNER_PRODUCT)
    index.cp.seed, index.cp.spherical = int(seed), True
    index.cp.max_points_per_centroid = IVF_TRAIN_POINTS_PER_LIST
    index.cp.min_points_per_centroid = 1  # small indexes: ivf_lists already keeps 39 points per list
    index.train(vectors)
    index.add(vectors)
    return index


def _inverted_list(index: faiss.IndexIVFFlat, list_no: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors (n, D) and ids (n,) of one list, viewed in the index's memory (no copy)."""
    lists, n = index.invlists, index.invlists.list_size(list_no)
    codes = faiss.rev_swig_ptr(lists.get_codes(list_no), n * lists.code_size)
    ids = faiss.rev_swig_ptr(lists.get_ids(list_no), n)
    return torch.from_numpy(codes.view(np.float32).reshape(n, index.d)), torch.from_numpy(ids.view(np.int64))


@torch.no_grad()
def ivf_search(index: faiss.IndexIVFFlat, queries: torch.Tensor | np.ndarray, k: int,
               nprobe: int = DEFAULT_NPROBE) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` inner-product scores and ids of each query among the vectors of its ``nprobe`` nearest
    lists (CPU tensors; score -inf and id -1 pad a row when those lists hold fewer than ``k`` vectors).

    The same neighbours as ``index.search`` with that ``nprobe``, found faster for batches of queries:
    faiss scans the probed lists once per query, reading Q × nprobe lists from memory; here the queries
    are grouped by list, so each list is read once and scored against all its queries by one matrix
    product (6x faster at 5,000 queries × 1M candidates: 0.9 s against 5.8 s). The products are small and
    many, so they run on ``torch.get_num_threads()`` Python threads with one BLAS thread each (torch's thread
    count is 1 during the call, then restored): on a shared machine OpenMP barriers in every small product
    cost more than the products themselves (measured 5-10x).
    Grouping pays from about ``GROUPED_MIN_QUERIES_PER_LIST`` queries per probed list; fewer queries (one
    query of the MONAI Label app) go through faiss's own scan.
    """
    nprobe = min(check_nprobe(nprobe), index.nlist)
    queries = _float32_array(queries)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"expected (Q, {index.d}) queries, got shape {queries.shape}")
    k = min(k, index.ntotal)
    faiss.omp_set_num_threads(torch.get_num_threads())
    if len(queries) * nprobe < GROUPED_MIN_QUERIES_PER_LIST * index.nlist:
        scores, ids = index.search(queries, k, params=faiss.SearchParametersIVF(nprobe=nprobe))
        scores[ids < 0] = -np.inf
        return torch.from_numpy(scores), torch.from_numpy(ids)
    _, probes = index.quantizer.search(queries, nprobe)
    q = torch.from_numpy(queries)
    # slot j of query i holds the top-k of its j-th list; the (query, list) slots are distinct, so the
    # threads below never write the same element
    slot_v = torch.full((len(q), nprobe * k), -float("inf"))
    slot_i = torch.full((len(q), nprobe * k), -1, dtype=torch.long)
    pairs = torch.from_numpy(probes).reshape(-1)  # (query, probe) flattened; -1 where no list remains
    order = torch.argsort(pairs, stable=True)
    lists, counts = torch.unique_consecutive(pairs[order], return_counts=True)
    starts = (torch.cumsum(counts, 0) - counts).tolist()

    def score(job: tuple[int, int, int]) -> None:
        list_no, start, count = job
        if index.invlists.list_size(list_no) == 0:
            return
        vectors, ids = _inverted_list(index, list_no)
        pos = order[start : start + count]
        rows, slots = pos // nprobe, pos % nprobe
        v, i = (q[rows] @ vectors.T).topk(min(k, len(ids)), dim=1)
        cols = slots[:, None] * k + torch.arange(v.shape[1])
        slot_v[rows[:, None], cols], slot_i[rows[:, None], cols] = v, ids[i]

    jobs = [(list_no, s, c) for list_no, s, c in zip(lists.tolist(), starts, counts.tolist()) if list_no >= 0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if threads == 1:
            for job in jobs:
                score(job)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(score, jobs))
    finally:
        torch.set_num_threads(threads)
    scores, best = slot_v.topk(k, dim=1)
    return scores, slot_i.gather(1, best)


def ivf_topk(queries: torch.Tensor, candidates: torch.Tensor, k: int, nprobe: int = DEFAULT_NPROBE,
             nlist: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-``k``: :func:`build_ivf` over the candidates, then :func:`ivf_search`; results come
    back on the queries' device."""
    scores, idx = ivf_search(build_ivf(candidates, nlist, seed), queries, k, nprobe)
    return scores.to(queries.device), idx.to(queries.device)


def topk_search(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    backend: str = "auto",
    approximate: bool | str = False,
    nprobe: int = DEFAULT_NPROBE,
    **chunk_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` by inner product.

    Exact by default, with ``backend`` "torch" (:func:`chunked_topk`), "faiss" (:func:`faiss_topk`) or
    "auto": faiss for CPU tensors with at least ``FAISS_MIN_PAIRS`` query-candidate pairs, torch otherwise
    (GPU tensors stay on the GPU). ``approximate=True`` (or "auto" from ``APPROXIMATE_MIN_CANDIDATES``
    candidates on) searches an IVF index instead (:func:`ivf_topk`, ``nprobe`` lists per query).
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
    if use_approximate(approximate, candidates.shape[0]):
        return ivf_topk(queries, candidates, k, nprobe)
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
