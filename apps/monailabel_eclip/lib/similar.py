"""Similar studies: the datastore images (and indexed reports) nearest to a chest X-ray in eCLIP space, with the
search optionally steered by where a reader looked."""

from __future__ import annotations

import logging
import os
import threading

import torch
from monai.transforms import Compose
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

from eclip_monai.errors import CXRDataError
from eclip_monai.evaluation.embed import embed_dataset, eval_image_transforms
from eclip_monai.inference.gaze_query import gaze_request
from eclip_monai.networks import build_eclip
from eclip_monai.networks.checkpoint import load_weights
from eclip_monai.networks.eclip import ECLIP
from eclip_monai.rag.index import ReportIndex

from lib.network import AppSettings, checkpoint_has_processor

logger = logging.getLogger(__name__)


class SimilarStudies(BasicInferTask):
    """Top-k cosine neighbours of the request image among the datastore's images (itself excluded) and, when
    a report index is given, its top-k reports.

    **Gaze-steered search**: a request with ``fixations`` (``[[x, y, duration_s], ...]`` in the image's pixel
    frame, optionally ``pixels_per_degree``) or an ``roi`` (``[xmin, ymin, xmax, ymax]``) is turned into the
    reader's heatmap, the heatmap processor makes the expert image HP(I, H), and its embedding is the query,
    so the neighbours are the studies that look like what the reader was looking at. It needs eCLIP weights
    (a CLIP baseline has no processor: a 422 says so). Datastore images are always embedded without gaze.

    The eCLIP network is loaded from the checkpoint here (strictly, processor included) and reloaded when the
    file changes. Datastore embeddings are cached per file and modification time, so new images are picked
    up by the next request; files that fail to load are skipped with a warning. ``top_k`` in the request
    overrides the default.
    """

    def __init__(self, settings: AppSettings, datastore: Datastore, report_index: ReportIndex | None = None):
        super().__init__(
            path=settings.checkpoint,
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=2,
            description="eCLIP image embedding (optionally steered by the reader's gaze) -> top-k similar "
                        "studies of the datastore" + (" and nearest reports" if report_index is not None else ""),
            config={"top_k": settings.top_k},
        )
        self.settings, self.datastore, self.report_index = settings, datastore, report_index
        self._network: tuple[float, ECLIP] | None = None  # (checkpoint mtime, network)
        self._cache: dict[str, tuple[float, torch.Tensor | None]] = {}  # image path -> (mtime, embedding)
        self._lock = threading.Lock()

    def eclip(self, device) -> ECLIP:
        """The eCLIP network with the checkpoint's current weights (reloaded when the file changes)."""
        with self._lock:
            mtime = os.path.getmtime(self.settings.checkpoint)
            if self._network is None or self._network[0] != mtime:
                s = self.settings
                network = build_eclip(model_name=s.model_name, image_size=s.image_size, hf_model_name=s.hf_model_name,
                                      experts=checkpoint_has_processor(s.checkpoint))
                self._network = (mtime, load_weights(network, s.checkpoint).to(device).eval())
                self._cache = {}  # new weights: every cached embedding is stale
            return self._network[1]

    def pre_transforms(self, data=None):
        steered = data is not None and data.get("heatmap_request") is not None
        chain = eval_image_transforms(self.settings.image_size, with_heatmap=steered)
        return list(chain.transforms)

    def post_transforms(self, data=None):
        return []

    def __call__(self, request, callbacks=None):
        request = dict(request)
        image = request.get("image")
        request["heatmap_request"] = gaze_request(request, image if isinstance(image, str) else None)
        if request["heatmap_request"] is not None:
            request.update(request["heatmap_request"])
        return super().__call__(request, callbacks)

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        network = self.eclip(device)
        image = torch.as_tensor(data[self.input_key]).float()[None].to(device)
        with torch.no_grad():
            if data.get("heatmap_request") is not None:
                if not network.has_experts:
                    raise CXRDataError("gaze-steered search needs eCLIP weights with a heatmap processor; the "
                                       "served checkpoint is a CLIP baseline", path=self.settings.checkpoint,
                                       field="fixations")
                heatmap = torch.as_tensor(data["heatmap"]).float()[None].to(device)
                query = network.encode_expert_image(image, heatmap)
            else:
                query = network.encode_image(image)
        data[self.output_label_key] = query[0].cpu()
        return data

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
        result: dict = {"top_k": k, "gaze": data.get("heatmap_request") is not None, "neighbours": []}
        if ids:
            scores, rows = (embeddings @ query).topk(min(k, len(ids)))
            result["neighbours"] = [{"image": ids[r], "score": float(s)} for s, r in zip(scores, rows.tolist())]
        if self.report_index is not None:
            scores, rows = self.report_index.search(query[None], k)
            result["reports"] = [{"id": self.report_index.ids[r], "report": self.report_index.reports[r],
                                  "score": float(s)} for s, r in zip(scores[0], rows[0]) if r >= 0]
        return None, result

    def _datastore_embeddings(self, device, exclude: str) -> tuple[list[str], torch.Tensor]:
        """(ids, (N, D) L2-normalised embeddings) of the loadable datastore images other than ``exclude``."""
        network = self.eclip(device)
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

    def _embed(self, network: ECLIP, paths: list[str], device) -> dict[str, torch.Tensor]:
        """Embeddings of the images that load, by path (``embed_dataset`` skips and counts the others)."""
        try:
            out = embed_dataset(network, [{"image": p} for p in paths],
                                Compose(eval_image_transforms(self.settings.image_size).transforms),
                                batch_size=16, device=device, desc="datastore", progress=False)
        except CXRDataError:  # not one of them loaded
            return {}
        return dict(zip(out.paths, out.image.float()))
