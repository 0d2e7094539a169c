"""Similar studies: the datastore images (and indexed reports) nearest to a chest X-ray in eCLIP space."""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from monai.transforms import Compose
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.embed import embed_dataset
from eclip_monai.rag.index import ReportIndex

from lib.findings import ZeroShotFindings

logger = logging.getLogger(__name__)


class SimilarStudies(BasicInferTask):
    """Top-k cosine neighbours of the request image among the datastore's images (itself excluded) and,
    when a report index is given, its top-k reports.

    The network is the findings task's (same checkpoint, loaded once, reloaded with it). Datastore embeddings
    are computed on first use and cached per file and modification time, so images added to the studies
    folder are picked up by the next request; files that fail to load are skipped with a warning.
    The request's ``top_k`` overrides the default.
    """

    def __init__(self, findings: ZeroShotFindings, datastore: Datastore, top_k: int = 5,
                 report_index: ReportIndex | None = None):
        super().__init__(
            path=findings.path,
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="eCLIP image embedding -> top-k similar studies of the datastore"
            + (" and nearest reports" if report_index is not None else ""),
            config={"top_k": top_k},
        )
        self.findings, self.datastore, self.report_index = findings, datastore, report_index
        self._cache: dict[str, tuple[float, torch.Tensor | None]] = {}  # image path -> (mtime, embedding)
        self._cache_network = None

    def pre_transforms(self, data=None):
        return self.findings.pre_transforms(data)

    def post_transforms(self, data=None):
        return []

    def _get_network(self, device, data):
        return self.findings._get_network(device, data).embed  # SimpleInferer calls it: image -> embedding

    def writer(self, data, extension=None, dtype=None):
        try:
            k = int(data.get("top_k", self._config["top_k"]))
        except (TypeError, ValueError):
            k = 0
        if k < 1:
            raise CXRDataError(f"expected a positive integer, found {data.get('top_k')!r}", field="top_k")
        query = torch.as_tensor(data[self.output_label_key]).float().cpu().flatten()
        query_path = os.path.realpath(data["image_path"])
        ids, embeddings = self._datastore_embeddings(data["device"], exclude=query_path)
        result: dict = {"top_k": k, "neighbours": []}
        if ids:
            scores, rows = (embeddings @ query).topk(min(k, len(ids)))
            result["neighbours"] = [{"image": ids[r], "score": float(s)}
                                    for s, r in zip(scores, rows.tolist())]
        if self.report_index is not None:
            scores, rows = self.report_index.search(query[None], k)
            result["reports"] = [{"id": self.report_index.ids[r], "report": self.report_index.reports[r],
                                  "score": float(s)} for s, r in zip(scores[0], rows[0]) if r >= 0]
        return None, result

    def _datastore_embeddings(self, device, exclude: str) -> tuple[list[str], torch.Tensor]:
        """(ids, (N, D) L2-normalised embeddings) of the loadable datastore images other than ``exclude``."""
        network = self.findings._get_network(device, None)
        if network is not self._cache_network:  # new weights: every cached embedding is stale
            self._cache, self._cache_network = {}, network
        paths = {image_id: os.path.realpath(self.datastore.get_image_uri(image_id))
                 for image_id in self.datastore.list_images()}
        mtimes = {path: os.path.getmtime(path) for path in paths.values() if os.path.isfile(path)}
        missing = [p for p, m in mtimes.items() if p not in self._cache or self._cache[p][0] != m]
        if missing:
            found = self._embed(network, missing, device)
            for path in missing:
                self._cache[path] = (mtimes[path], found.get(path))
                if path not in found:
                    logger.warning(f"{path}: could not be loaded; left out of the similar-studies search")
        rows = [(i, self._cache[p][1]) for i, p in paths.items()
                if p != exclude and p in mtimes and self._cache[p][1] is not None]
        if not rows:
            return [], torch.empty(0)
        return [i for i, _ in rows], torch.stack([e for _, e in rows])

    def _embed(self, network, paths: list[str], device) -> dict[str, torch.Tensor]:
        """Embeddings of the images that load, by path (``embed_dataset`` skips and counts the others)."""
        try:
            out = embed_dataset(network.clip, [{"image": p} for p in paths], Compose(self.pre_transforms()),
                                batch_size=16, device=device, desc="datastore", progress=False)
        except CXRDataError:  # not one of them loaded
            return {}
        return dict(zip(out.paths, F.normalize(out.image, dim=-1)))
