"""Reports for an image by eCLIP similarity: plain top-k, or the paper's diverse snippet selection.

Plain top-k often returns near-duplicates (many training reports say "no acute cardiopulmonary process"),
which waste the LLM's context. Diverse selection, as in the eCLIP paper, takes the top ``candidates`` (100)
reports, clusters their embeddings into ``k`` (5) groups with k-means, and keeps the report nearest each
centre.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import Dataset
from monai.utils import convert_to_tensor
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from eclip_monai.data.robust import SkipBadSamples, collate_skip_bad
from eclip_monai.rag.index import ReportIndex, network_device
from eclip_monai.transforms import eval_transforms


@dataclass(frozen=True)
class RetrievedReport:
    id: str
    text: str
    score: float  # cosine similarity to the image


@dataclass(frozen=True)
class Retrieval:
    """``ranked``: candidates by similarity, best first; ``snippets``: the reports that go into the prompt."""

    ranked: list[RetrievedReport]
    snippets: list[RetrievedReport]


def select_diverse(embeddings: np.ndarray, k: int = 5, seed: int = 0) -> list[int]:
    """Row indices of ``k`` representatives: k-means on the rows, then the row nearest each centre.

    Returned in row order, so rows ranked by similarity stay ranked. With fewer than ``k`` distinct rows,
    every distinct row is one cluster.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    clusters = min(k, len(np.unique(embeddings, axis=0)))
    if clusters <= 1:
        return [0]
    with warnings.catch_warnings():  # duplicate rows can leave k-means with fewer distinct points than usual
        warnings.simplefilter("ignore", ConvergenceWarning)
        kmeans = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(embeddings)
    distances = kmeans.transform(embeddings)  # (N, clusters)
    picks = set()
    for c in range(clusters):
        members = np.flatnonzero(kmeans.labels_ == c)
        picks.add(int(members[np.argmin(distances[members, c])]))
    return sorted(picks)


class ReportRetriever:
    """Top reports of a :class:`ReportIndex` for image embeddings.

    Args:
        index: the training-report index.
        k: reports per image handed to the prompt.
        diverse: pick ``k`` cluster representatives among the top ``candidates`` instead of the top ``k``.
        candidates: how many nearest reports diverse selection clusters (the paper: 100).
        seed: k-means seed.
    """

    def __init__(self, index: ReportIndex, k: int = 5, diverse: bool = False, candidates: int = 100,
                 seed: int = 0):
        if k < 1 or (diverse and candidates < k):
            raise ValueError(f"expected k >= 1 and candidates >= k, found k={k}, candidates={candidates}")
        self.index, self.k, self.diverse, self.candidates, self.seed = index, k, diverse, candidates, seed

    def __call__(self, image_embeddings: np.ndarray | torch.Tensor) -> list[Retrieval]:
        scores, rows = self.index.search(image_embeddings, self.candidates if self.diverse else self.k)
        results = []
        for score_row, index_row in zip(scores, rows):
            ranked = [RetrievedReport(self.index.ids[i], self.index.reports[i], float(s))
                      for s, i in zip(score_row, index_row) if i >= 0]
            snippets = ranked[: self.k]
            if self.diverse:
                picks = select_diverse(self.index.embeddings[index_row[index_row >= 0]], self.k, self.seed)
                snippets = [ranked[i] for i in picks]
            results.append(Retrieval(ranked, snippets))
        return results


@torch.no_grad()
def embed_images(
    network: nn.Module,
    items: Sequence[dict],
    image_size: int,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    num_workers: int = 0,
    id_key: str = "dicom_id",
) -> tuple[list[str], torch.Tensor]:
    """Image embeddings of datalist ``items`` (``{"image": dicom path, id_key: ...}``) through the eval chain.

    Images that fail to load with ``CXRDataError`` are skipped (with a warning naming the file), so the
    returned ids, not the input order, say which embedding row belongs to which item.
    """
    device = torch.device(device) if device is not None else network_device(network)
    records = [{"image": item["image"], id_key: item[id_key]} for item in items]
    dataset = SkipBadSamples(Dataset(records, eval_transforms(image_size)))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skip_bad)
    network.eval()
    ids, chunks = [], []
    for batch in tqdm(loader, desc="encoding images", unit="batch"):
        if "image" in batch:
            image = convert_to_tensor(batch["image"], device=device, track_meta=False)
            chunks.append(network.encode_image(image).float().cpu())
            ids.extend(str(i) for i in batch[id_key])
    width = chunks[0].shape[1] if chunks else 0
    return ids, torch.cat(chunks) if chunks else torch.empty(0, width)
