"""The app's settings (the server's ``--conf`` pairs) and the zero-shot eCLIP network they describe.

No MONAI Label import here, so the settings and the network can be built and checked without a server.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.errors import CXRDataError
from eclip_monai.integrity import file_sha256
from eclip_monai.networks import build_eclip
from eclip_monai.networks.checkpoint import has_processor, read_state_dict
from eclip_monai.networks.zero_shot import ZeroShotClassifier
from eclip_monai.rag.index import MANIFEST_FILE, ReportIndex
from eclip_monai.networks import build_tokenizer


@dataclass(frozen=True)
class AppSettings:
    """What ``--conf key value`` may set. Defaults are the training bundle's (``bundle/configs/train.json``),
    so a checkpoint trained with the bundle's defaults needs only ``checkpoint``.

    Args:
        checkpoint: local eCLIP (or CLIP-baseline) checkpoint: ``{"model": state_dict}`` or a bare state dict.
        model_name, image_size, hf_model_name: the towers the checkpoint was trained with.
        findings: finding names to score, comma-separated in ``--conf``; unknown names are prompted by
            their lower-cased text.
        top_k: neighbours the similarity task returns unless the request's ``top_k`` says otherwise.
        report_index: optional directory of a saved ``eclip_monai.rag.index.ReportIndex`` built with the
            same checkpoint; the similarity task then also returns the nearest reports.
    """

    checkpoint: str
    model_name: str = "eclip-vit-b16"
    image_size: int = 224
    hf_model_name: str | None = None
    findings: tuple[str, ...] = DEFAULT_FINDINGS
    top_k: int = 5
    report_index: str | None = None

    @classmethod
    def from_conf(cls, conf: Mapping[str, str]) -> AppSettings:
        checkpoint = conf.get("checkpoint")
        if not checkpoint:
            raise CXRDataError("expected `--conf checkpoint /path/to/model.pt` (weights are never "
                               "downloaded), found none", field="checkpoint")
        if not os.path.isfile(checkpoint):
            raise CXRDataError("checkpoint file not found", path=checkpoint, field="checkpoint")
        findings = tuple(f.strip() for f in conf.get("findings", ",".join(DEFAULT_FINDINGS)).split(","))
        if not all(findings):
            raise CXRDataError(f"expected comma-separated finding names, found {conf['findings']!r}",
                               field="findings")
        report_index = conf.get("report_index") or None
        if report_index and not os.path.isdir(report_index):
            raise CXRDataError("report index directory not found", path=report_index, field="report_index")
        return cls(os.path.realpath(checkpoint), conf.get("model_name", cls.model_name),
                   _positive_int(conf, "image_size", cls.image_size), conf.get("hf_model_name") or None,
                   findings, _positive_int(conf, "top_k", cls.top_k), report_index)


def _positive_int(conf: Mapping[str, str], key: str, default: int) -> int:
    value = conf.get(key, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise CXRDataError(f"expected a positive integer, found {value!r}", field=key)
    return number


def checkpoint_has_processor(path: str) -> bool:
    """Whether the checkpoint holds a heatmap processor (eCLIP) or not (CLIP baseline): an eCLIP network must
    have the same modules for a strict load (the zero-shot classifier drops the processor either way)."""
    state = read_state_dict(path, mmap=True)
    if not any(name.startswith("clip.") for name in state):
        raise CXRDataError("expected eCLIP weights (a state dict with keys starting 'clip.', optionally "
                           "under 'model')", path=path, field="model")
    return has_processor(state)


def build_classifier(settings: AppSettings) -> ZeroShotClassifier:
    """The untrained network the checkpoint is loaded into (``BasicInferTask`` does the strict load, which
    takes eCLIP and CLIP-baseline weights alike); a checkpoint without eCLIP weights fails at start-up."""
    checkpoint_has_processor(settings.checkpoint)
    network = build_eclip(model_name=settings.model_name, image_size=settings.image_size,
                          hf_model_name=settings.hf_model_name, experts=False)
    tokenizer = build_tokenizer(settings.model_name, hf_tokenizer_name=settings.hf_model_name)
    return ZeroShotClassifier(network, tokenizer, settings.findings).eval()


def load_report_index(app: AppSettings, dim: int) -> ReportIndex | None:
    """The saved report index, refused when it was built from other weights (its neighbours would be
    meaningless) or for another embedding size."""
    if not app.report_index:
        return None
    index = ReportIndex.load(app.report_index)
    manifest = os.path.join(app.report_index, MANIFEST_FILE)
    if index.manifest.get("checkpoint_sha256") != file_sha256(app.checkpoint):
        raise CXRDataError(f"expected an index built from the served checkpoint {app.checkpoint}, found "
                           f"another ({index.manifest.get('checkpoint')}); rebuild it", path=manifest,
                           field="checkpoint_sha256")
    if index.manifest.get("dim") != dim:
        raise CXRDataError(f"expected {dim}-d embeddings, found {index.manifest.get('dim')}", path=manifest,
                           field="dim")
    return index
