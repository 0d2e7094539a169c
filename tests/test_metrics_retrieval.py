import torch

from eclip_monai.metrics.retrieval import (
    CrossModalRecall,
    chunked_topk,
    cross_modal_recall,
    recall_at_k,
    report_group_id,
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
