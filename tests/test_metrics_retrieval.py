import pytest
import torch

from eclip_monai.metrics import retrieval
from eclip_monai.metrics.retrieval import (
    CrossModalRecall,
    chunked_topk,
    cross_modal_recall,
    faiss_topk,
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
