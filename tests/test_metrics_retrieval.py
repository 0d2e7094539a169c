import numpy as np
import pytest
import torch

from eclip_monai.metrics import retrieval
from eclip_monai.metrics.retrieval import (
    DEFAULT_NPROBE,
    CrossModalRecall,
    build_ivf,
    chunked_topk,
    cross_modal_recall,
    faiss_topk,
    ivf_lists,
    ivf_search,
    recall_at_k,
    report_group_id,
    topk_search,
)


def _normed(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_chunked_topk_matches_full_matrix_topk():
    torch.manual_seed(0)
    q, c = _normed(torch.randn(37, 16)), _normed(torch.randn(1000, 16))
    vals, idx = chunked_topk(q, c, k=7, query_chunk=5, candidate_chunk=64)
    ref_vals, ref_idx = (q @ c.T).topk(7, dim=1)
    assert torch.allclose(vals, ref_vals, atol=1e-6)
    assert torch.equal(idx, ref_idx)


def test_perfect_embeddings_give_recall_one_and_shuffled_give_chance():
    torch.manual_seed(0)
    feats = _normed(torch.randn(64, 32))
    groups = torch.arange(64)
    perfect = cross_modal_recall(feats, feats.clone(), groups, ks=(1, 5))
    assert perfect["i2t_R@1"] == 1.0 and perfect["t2i_R@1"] == 1.0
    shuffled = cross_modal_recall(feats, feats[torch.randperm(64)], groups, ks=(1,))
    assert shuffled["i2t_R@1"] < 0.2


def test_duplicate_reports_are_one_candidate_and_any_matching_image_counts():
    # two images share report A; text→image for A is a hit if either image ranks first
    img = _normed(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    txt = _normed(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    groups = torch.tensor([report_group_id("A"), report_group_id("A "), report_group_id("B")])
    scores = cross_modal_recall(img, txt, groups, ks=(1,))
    assert scores == {"i2t_R@1": 1.0, "t2i_R@1": 1.0}


def test_hand_computed_recall_at_k():
    queries = torch.eye(3)
    candidates = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    qg, cg = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])
    # q0 ranks c1 (1.0) then c2 (0.5): hit for group 0 only at... c0 has 0 -> miss at k=2
    # q1 ranks c0 (1.0) then c2: miss at 1 and 2; q2 all zeros ties -> any order
    r = recall_at_k(queries[:2], qg[:2], candidates, cg, ks=(1, 3))
    assert r[1] == 0.0 and r[3] == 1.0


def test_ignite_metric_accumulates_batches():
    torch.manual_seed(1)
    feats = _normed(torch.randn(20, 8))
    groups = torch.arange(20)
    metric = CrossModalRecall(k=1, direction="mean")
    for s in range(0, 20, 6):
        metric.update((feats[s : s + 6], feats[s : s + 6], groups[s : s + 6]))
    assert metric.compute() == 1.0
    metric.reset()
    metric.update((feats, feats.roll(1, 0), groups))
    assert metric.compute() == 0.0


def test_faiss_and_torch_search_agree():
    torch.manual_seed(2)
    q, c = _normed(torch.randn(300, 32)), _normed(torch.randn(5000, 32))
    torch_vals, torch_idx = chunked_topk(q, c, k=10, query_chunk=64, candidate_chunk=512)
    faiss_vals, faiss_idx = faiss_topk(q, c, k=10)
    assert torch.equal(faiss_idx, torch_idx)
    torch.testing.assert_close(faiss_vals, torch_vals, atol=1e-5, rtol=0)


def test_faiss_and_torch_recall_agree_with_tied_duplicate_candidates():
    torch.manual_seed(3)
    feats = _normed(torch.randn(40, 8))
    texts = torch.cat([feats, feats])  # every candidate twice: exact ties in every ranking
    groups = torch.arange(80) % 40
    by_torch = recall_at_k(feats, torch.arange(40), texts, groups, ks=(1, 2, 5), backend="torch")
    by_faiss = recall_at_k(feats, torch.arange(40), texts, groups, ks=(1, 2, 5), backend="faiss")
    assert by_torch == by_faiss == {1: 1.0, 2: 1.0, 5: 1.0}
    torch_vals, _ = topk_search(feats, texts, 6, backend="torch")
    faiss_vals, _ = topk_search(feats, texts, 6, backend="faiss")
    torch.testing.assert_close(faiss_vals, torch_vals, atol=1e-6, rtol=0)


def test_auto_backend_uses_faiss_only_for_large_cpu_searches(monkeypatch):
    calls = []
    monkeypatch.setattr(retrieval, "faiss_topk", lambda q, c, k: calls.append((len(q), len(c))))
    small, large = torch.zeros(10, 4), torch.zeros(retrieval.FAISS_MIN_PAIRS // 10, 4)
    topk_search(small, small, 1)
    assert calls == []
    topk_search(small, large, 1)
    assert calls == [(10, len(large))]
    with pytest.raises(ValueError, match="backend"):
        topk_search(small, small, 1, backend="annoy")


def test_torch_search_over_100k_candidates_never_forms_the_full_similarity_matrix(monkeypatch):
    torch.manual_seed(4)
    q, c = _normed(torch.randn(600, 8)), _normed(torch.randn(120_000, 8))
    largest = []
    matmul = torch.Tensor.__matmul__

    def spy(a, b):
        out = matmul(a, b)
        largest.append(out.numel())
        return out

    monkeypatch.setattr(torch.Tensor, "__matmul__", spy)
    vals, idx = chunked_topk(q, c, k=5)
    monkeypatch.undo()
    assert max(largest) <= 512 * 8192 < q.shape[0] * c.shape[0] / 10
    ref_vals, ref_idx = faiss_topk(q, c, k=5)
    assert torch.equal(idx, ref_idx)


def clustered_unit_vectors(n: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Unit vectors of low intrinsic dimension (an 8-d mixture of 20 overlapping Gaussians, embedded by a
    fixed orthonormal basis, plus noise), so near neighbours exist and an approximate search can miss them;
    ``seed`` draws the points, the structure is shared."""
    structure = torch.Generator().manual_seed(1234)
    basis = torch.linalg.qr(torch.randn(dim, 8, generator=structure))[0]
    centres = torch.randn(20, 8, generator=structure)
    g = torch.Generator().manual_seed(seed)
    latent = centres[torch.randint(20, (n,), generator=g)] + torch.randn(n, 8, generator=g)
    return _normed(latent @ basis.T / 8**0.5 + 0.3 * torch.randn(n, dim, generator=g) / dim**0.5)


@pytest.fixture(scope="module")
def ann_set():
    """20k clustered candidates, 500 queries, the exact top 10 and an IVF index over the candidates."""
    candidates, queries = clustered_unit_vectors(20_000, seed=1), clustered_unit_vectors(500, seed=2)
    _, exact = faiss_topk(queries, candidates, 10)
    return candidates, queries, exact, build_ivf(candidates, seed=0)


def _recall(found: torch.Tensor, exact: torch.Tensor) -> float:
    return (found[:, :, None] == exact[:, None, :]).any(2).double().mean().item()


def test_approximate_search_finds_95_percent_of_the_exact_top_10_at_the_default_nprobe(ann_set):
    candidates, queries, exact, _ = ann_set
    _, found = topk_search(queries, candidates, 10, approximate=True)
    assert _recall(found, exact) >= 0.95


def test_fewer_lists_searched_never_find_more_neighbours(ann_set):
    _, queries, exact, index = ann_set
    recalls = [_recall(ivf_search(index, queries, 10, nprobe)[1], exact)
               for nprobe in (1, 2, 4, 8, DEFAULT_NPROBE, index.nlist)]
    assert recalls == sorted(recalls)
    assert recalls[0] < 0.9 and recalls[-1] == 1.0  # one list misses neighbours; every list is exact


def test_grouped_search_returns_what_faiss_returns_for_one_query_or_many(ann_set):
    _, queries, _, index = ann_set
    for nprobe in (1, 3, DEFAULT_NPROBE):
        index.nprobe = nprobe
        ref_scores, ref_ids = index.search(queries.numpy(), 10)
        scores, ids = ivf_search(index, queries, 10, nprobe)  # 500 queries: grouped by list
        one = [ivf_search(index, queries[i : i + 1], 10, nprobe) for i in range(5)]  # faiss's own scan
        assert torch.equal(ids, torch.from_numpy(ref_ids))
        assert torch.equal(torch.cat([o[1] for o in one]), ids[:5])
        torch.testing.assert_close(scores, torch.from_numpy(ref_scores), atol=1e-5, rtol=0)


def test_ivf_training_is_seeded(ann_set):
    candidates, queries, _, index = ann_set
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    again = build_ivf(candidates, seed=0)
    assert np.array_equal(again.quantizer.reconstruct_n(0, again.nlist), centroids)
    assert torch.equal(ivf_search(again, queries, 10)[1], ivf_search(index, queries, 10)[1])
    other = build_ivf(candidates, seed=1)
    assert not np.array_equal(other.quantizer.reconstruct_n(0, other.nlist), centroids)


def test_auto_searches_exactly_below_the_threshold_and_approximately_from_it(monkeypatch):
    calls = []
    monkeypatch.setattr(retrieval, "ivf_topk", lambda q, c, k, nprobe: calls.append(("ivf", len(c), nprobe)))
    monkeypatch.setattr(retrieval, "faiss_topk", lambda q, c, k: calls.append(("exact", len(c))))
    queries = torch.zeros(10, 2)
    threshold = retrieval.APPROXIMATE_MIN_CANDIDATES
    below, at = torch.zeros(threshold - 1, 2), torch.zeros(threshold, 2)
    topk_search(queries, below, 1, approximate="auto")
    topk_search(queries, at, 1, approximate="auto", nprobe=3)
    topk_search(queries, at, 1)  # exact unless asked: metrics never depend on an index's parameters
    assert calls == [("exact", len(below)), ("ivf", len(at), 3), ("exact", len(at))]
    assert ivf_lists(1_000_000) == 1024 and ivf_lists(20_000) == 128 and ivf_lists(100) == 2


@pytest.mark.parametrize("bad, match", [
    (dict(nprobe=0), "nprobe"), (dict(nprobe=2.5), "nprobe"), (dict(nprobe=True), "nprobe"),
    (dict(approximate="sometimes"), "approximate"), (dict(approximate=1), "approximate"),
])
def test_bad_approximate_search_parameters_are_refused(bad, match):
    q = _normed(torch.randn(4, 8))
    with pytest.raises(ValueError, match=match):
        topk_search(q, q, 2, **{"approximate": True, **bad})


@pytest.mark.parametrize("nlist", [0, 101, 3.0])
def test_a_list_count_outside_one_to_the_candidate_count_is_refused(nlist):
    with pytest.raises(ValueError, match="nlist .* from 1 to the 100 vectors"):
        build_ivf(_normed(torch.randn(100, 8)), nlist=nlist)
