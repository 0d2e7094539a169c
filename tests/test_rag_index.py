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


def test_small_corpora_are_searched_exactly_by_default():
    index = ReportIndex.build(CountingTextNet(), bag_of_words, REPORTS)
    assert index.search_settings == {"kind": "exact"} and index.manifest["search"] == {"kind": "exact"}


def approximate_index(rows: np.ndarray, **search) -> ReportIndex:
    ids = [str(i) for i in range(len(rows))]
    return ReportIndex(rows, [f"report {i}" for i in ids], ids, {"corpus_sha256": "c"},
                       **{"approximate": True, "nlist": 8, "nprobe": 2, **search})


def test_approximate_index_round_trips_through_save_and_load(tmp_path):
    rows, _ = clustered_embeddings(clusters=8, per_cluster=100, dim=16, seed=1)
    queries, _ = clustered_embeddings(clusters=8, per_cluster=5, dim=16, seed=2)
    index = approximate_index(rows)
    index.save(tmp_path)
    loaded = ReportIndex.load(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["search"] == {"kind": "ivf", "nlist": 8, "nprobe": 2, "seed": 0} == loaded.search_settings
    np.testing.assert_array_equal(loaded.embeddings, rows)
    (got_scores, got_ids), (want_scores, want_ids) = loaded.search(queries, 10), index.search(queries, 10)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-6)  # BLAS may sum in another order
    # every list searched = exact search
    exact = ReportIndex(rows, index.reports, index.ids, approximate=False).search(queries, 10)[1]
    np.testing.assert_array_equal(ReportIndex.load(tmp_path, nprobe=8).search(queries, 10)[1], exact)
    np.testing.assert_array_equal(loaded.search(queries, 10, nprobe=8)[1], exact)


def test_other_search_settings_reindex_the_saved_embeddings_without_encoding_again(tmp_path):
    net, corpus = CountingTextNet(), REPORTS * 10  # 60 reports
    first = ReportIndex.load_or_build(tmp_path, net, bag_of_words, corpus, approximate=False)
    assert net.encoded == len(corpus) and first.search_settings == {"kind": "exact"}
    ivf = ReportIndex.load_or_build(tmp_path, net, bag_of_words, corpus, approximate=True, nlist=2)
    assert net.encoded == len(corpus)  # re-indexed, not re-encoded
    assert ivf.search_settings == {"kind": "ivf", "nlist": 2, "nprobe": 16, "seed": 0}
    np.testing.assert_array_equal(ivf.embeddings, first.embeddings)
    written = (tmp_path / "reports.faiss").stat().st_mtime_ns
    fewer = ReportIndex.load_or_build(tmp_path, net, bag_of_words, corpus, approximate=True, nlist=2,
                                      nprobe=1)
    assert (tmp_path / "reports.faiss").stat().st_mtime_ns == written  # a search setting: manifest only
    saved = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert saved["search"]["nprobe"] == 1 == fewer.search_settings["nprobe"]
    assert ReportIndex.load(tmp_path).search_settings["nprobe"] == 1 and net.encoded == len(corpus)


def test_an_index_file_that_is_not_the_one_its_manifest_describes_is_refused_or_rebuilt(tmp_path):
    net = CountingTextNet()
    ReportIndex.load_or_build(tmp_path / "a", net, bag_of_words, REPORTS, approximate=True, nlist=2)
    manifest_path = tmp_path / "a" / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "search": {**manifest["search"], "nlist": 3}}))
    with pytest.raises(CXRDataError, match=r"reports\.faiss: search: expected the index .*nlist 2"):
        ReportIndex.load(tmp_path / "a")
    manifest_path.write_text(json.dumps(manifest))

    other = CountingTextNet()
    with torch.no_grad():
        other.bias.fill_(0.7)  # other vectors, same size and kind
    ReportIndex.load_or_build(tmp_path / "b", other, bag_of_words, REPORTS, approximate=True, nlist=2)
    (tmp_path / "a" / "reports.faiss").write_bytes((tmp_path / "b" / "reports.faiss").read_bytes())
    with pytest.raises(CXRDataError, match=r"reports\.faiss: embeddings_sha256: .*stale"):
        ReportIndex.load(tmp_path / "a")
    rebuilt = ReportIndex.load_or_build(tmp_path / "a", net, bag_of_words, REPORTS, approximate=True, nlist=2)
    assert net.encoded == 2 * len(REPORTS)  # the stale file was not trusted: the corpus was encoded again
    reloaded = ReportIndex.load(tmp_path / "a")
    assert reloaded.manifest["embeddings_sha256"] == rebuilt.manifest["embeddings_sha256"]


@pytest.mark.parametrize("bad, match", [
    (dict(nprobe=0), "nprobe"), (dict(approximate="sometimes"), "approximate"), (dict(nlist=1000), "nlist"),
])
def test_bad_search_parameters_are_refused(bad, match):
    rows, _ = clustered_embeddings()
    with pytest.raises(ValueError, match=match):
        approximate_index(rows, **bad)
