"""Report index persistence (rebuilt only when corpus or checkpoint change) and retrieval with snippets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eclip_monai.errors import CXRDataError
from eclip_monai.rag import ReportIndex, ReportRetriever, select_diverse
from eclip_monai.rag.index import MANIFEST_FILE

WORDS = ("effusion", "cardiomegaly", "pneumothorax", "nodule", "edema")
REPORTS = ["Small effusion.", "Cardiomegaly.", "Right pneumothorax.", "Lung nodule.", "Mild edema.",
           "Cardiomegaly and effusion."]


def bag_of_words(texts) -> torch.Tensor:
    """A stand-in tokenizer: which of WORDS each text mentions."""
    return torch.tensor([[float(w in t.lower()) for w in WORDS] for t in texts])


class CountingTextNet(nn.Module):
    """Text embedding = normalised bag of words plus a constant; counts how many reports it encoded."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(0.1))
        self.encoded = 0

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        self.encoded += tokens.shape[0]
        return F.normalize(torch.cat([tokens, self.bias.expand(tokens.shape[0], 1)], 1), dim=-1)


def test_second_call_reuses_the_saved_index_and_changes_rebuild(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")
    net, directory = CountingTextNet(), tmp_path / "index"

    first = ReportIndex.load_or_build(directory, net, bag_of_words, REPORTS, checkpoint, batch_size=4)
    assert net.encoded == len(REPORTS)
    second = ReportIndex.load_or_build(directory, net, bag_of_words, REPORTS, checkpoint)
    assert net.encoded == len(REPORTS)  # nothing re-encoded
    np.testing.assert_allclose(second.embeddings, first.embeddings)
    assert second.reports == REPORTS and second.ids == [str(i) for i in range(len(REPORTS))]

    changed = REPORTS[:-1] + ["Large effusion."]
    third = ReportIndex.load_or_build(directory, net, bag_of_words, changed, checkpoint)
    assert net.encoded == 2 * len(REPORTS) and third.reports[-1] == "Large effusion."

    checkpoint.write_bytes(b"weights v2")
    ReportIndex.load_or_build(directory, net, bag_of_words, changed, checkpoint)
    assert net.encoded == 3 * len(REPORTS)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["size"] == len(REPORTS) and manifest["checkpoint"] == str(checkpoint)


def test_without_a_checkpoint_file_the_weights_identify_the_index(tmp_path):
    net = CountingTextNet()
    ReportIndex.load_or_build(tmp_path, net, bag_of_words, REPORTS)
    ReportIndex.load_or_build(tmp_path, net, bag_of_words, REPORTS)
    assert net.encoded == len(REPORTS)
    with torch.no_grad():
        net.bias.fill_(0.5)
    ReportIndex.load_or_build(tmp_path, net, bag_of_words, REPORTS)
    assert net.encoded == 2 * len(REPORTS)


def test_a_directory_without_manifest_is_not_an_index(tmp_path):
    index = ReportIndex.build(CountingTextNet(), bag_of_words, REPORTS)
    index.save(tmp_path)
    (tmp_path / MANIFEST_FILE).unlink()  # as if the save had been interrupted
    with pytest.raises(CXRDataError, match="manifest.json"):
        ReportIndex.load(tmp_path)
    net = CountingTextNet()
    ReportIndex.load_or_build(tmp_path, net, bag_of_words, REPORTS)
    assert net.encoded == len(REPORTS)


def test_search_ranks_the_report_with_the_same_findings_first():
    index = ReportIndex.build(CountingTextNet(), bag_of_words, REPORTS, ids=[f"s{i}" for i in range(6)])
    query = CountingTextNet().encode_text(bag_of_words(["pneumothorax on the right"])).detach()
    retrieval = ReportRetriever(index, k=3)(query)[0]
    assert retrieval.ranked[0].id == "s2" and retrieval.ranked[0].text == "Right pneumothorax."
    scores = [r.score for r in retrieval.ranked]
    assert scores == sorted(scores, reverse=True) and len(retrieval.snippets) == 3


def clustered_embeddings(clusters=5, per_cluster=20, dim=16, seed=0):
    """Tight clusters around random unit centres, rows shuffled; returns rows and their cluster labels."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    labels = rng.permutation(np.repeat(np.arange(clusters), per_cluster))
    rows = centres[labels] + 0.01 * rng.standard_normal((len(labels), dim))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32), labels


def test_diverse_selection_picks_one_report_from_each_cluster():
    rows, labels = clustered_embeddings()
    picks = select_diverse(rows, k=5, seed=0)
    assert len(picks) == 5 and sorted(labels[picks]) == [0, 1, 2, 3, 4]
    assert picks == sorted(picks)  # similarity order of the candidates is kept
    for pick in picks:  # each pick is its cluster's most central member
        members = rows[labels == labels[pick]]
        centre = members.mean(0)
        nearest = np.linalg.norm(members - centre, axis=1).min()
        assert np.linalg.norm(rows[pick] - centre) == pytest.approx(nearest)


def test_diverse_selection_copes_with_fewer_distinct_reports_than_k():
    rows = np.repeat(np.eye(3, 8, dtype=np.float32), 4, axis=0)
    picks = select_diverse(rows, k=5)
    assert len(picks) == 3 and len({tuple(rows[p]) for p in picks}) == 3


def test_retriever_diverse_mode_clusters_the_top_candidates():
    near, labels = clustered_embeddings()  # 5 clusters x 20 rows
    far = -np.repeat(near[:1], 50, axis=0)  # 50 rows pointing away from the query: never among the top 100
    rows = np.concatenate([near, far])
    index = ReportIndex(rows, [f"report {i}" for i in range(len(rows))], [str(i) for i in range(len(rows))])
    plain = ReportRetriever(index, k=5)(near[:1])[0]
    diverse = ReportRetriever(index, k=5, diverse=True, candidates=100)(near[:1])[0]
    assert len({labels[int(s.id)] for s in plain.snippets}) == 1  # the 5 nearest are one cluster
    assert len(diverse.ranked) == 100 and diverse.ranked[0].id == "0"
    assert all(int(r.id) < len(near) for r in diverse.ranked)
    assert len({labels[int(s.id)] for s in diverse.snippets}) == 5
    scores = [s.score for s in diverse.snippets]
    assert scores == sorted(scores, reverse=True)
