"""Report text → token ids for the text tower, offline.

Reports arrive as text or as a path to a MIMIC-style ``.txt``; the FINDINGS and IMPRESSION sections are what
CLIP trains on. Tokenisers come from open_clip (its CLIP BPE ships with the package) or from a local
Hugging Face tokenizer directory; nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import open_clip
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep
from open_clip.factory import parse_model_name
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, HFTokenizer

from eclip_monai.data.reports import DEFAULT_SECTIONS, extract_report_text
from eclip_monai.errors import CXRDataError
from eclip_monai.networks import model_configs  # noqa: F401  (registers the eclip-* names with open_clip)

__all__ = ["ExtractReportSectiond", "TokenizeText", "TokenizeTextd", "build_tokenizer"]


class ExtractReportSectiond(MapTransform):
    """Replace each report under ``keys`` by the text of its ``sections`` (see ``extract_report_text``).

    A one-line string ending in ``.txt`` (or any ``os.PathLike``) is read from disk; anything else is
    taken as the report text itself. Reports with none of the sections raise ``CXRDataError`` unless
    ``fallback_to_full``.
    """

    def __init__(
        self,
        keys: KeysCollection = "report",
        sections: Sequence[str] = DEFAULT_SECTIONS,
        fallback_to_full: bool = False,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.sections = tuple(sections)
        self.fallback_to_full = fallback_to_full

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            text, path = _read_report(d[key], key)
            d[key] = extract_report_text(text, self.sections, path=path,
                                         fallback_to_full=self.fallback_to_full)
        return d


class TokenizeText(Transform):
    """One report string → a LongTensor (context_length,) of token ids from an open_clip-style tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> torch.Tensor:
        if not isinstance(text, str) or not text.strip():
            raise CXRDataError(f"expected non-empty report text, found {text!r}"[:120], field="report")
        return self.tokenizer([text])[0].long()


class TokenizeTextd(MapTransform):
    """Dictionary version of :class:`TokenizeText`: tokenises ``d[key]`` into ``d[output_key]``."""

    def __init__(
        self,
        keys: KeysCollection = "report",
        output_key: KeysCollection = "text",
        tokenizer=None,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        if tokenizer is None:
            raise ValueError("TokenizeTextd needs a tokenizer (see build_tokenizer)")
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        self.tokenize = TokenizeText(tokenizer)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.tokenize(d[key])
        return d


def build_tokenizer(model_name: str | None = None, hf_tokenizer_name: str | None = None,
                    context_length: int | None = None):
    """The tokenizer for an open_clip model name, or a Hugging Face tokenizer from a local directory.

    With both, the local tokenizer with the model's context length. With neither, open_clip's CLIP BPE
    tokenizer. Refuses (``ValueError``) anything that would
    need the network: a Hugging Face name that is not a local directory, an ``hf-hub:`` model, or a
    built-in model whose text tower uses a Hugging Face tokenizer (pass its local copy as
    ``hf_tokenizer_name`` instead).
    """
    if hf_tokenizer_name:
        if not os.path.isdir(hf_tokenizer_name):
            raise ValueError(f"hf_tokenizer_name must be a local tokenizer directory (no downloads), got "
                             f"{hf_tokenizer_name!r}")
        if context_length is None and model_name:  # the text tower's own length when the model is known
            text_cfg = (open_clip.get_model_config(model_name) or {}).get("text_cfg", {})
            context_length = text_cfg.get("context_length")
        return HFTokenizer(hf_tokenizer_name, context_length=context_length or DEFAULT_CONTEXT_LENGTH,
                           local_files_only=True)
    if not model_name:
        return open_clip.SimpleTokenizer(context_length=context_length or DEFAULT_CONTEXT_LENGTH)
    schema, identifier = parse_model_name(model_name)
    if schema == "hf-hub":
        raise ValueError(f"{model_name!r} would be fetched from the Hugging Face Hub; use a built-in "
                         "open_clip model name or a local tokenizer directory")
    if schema is None:
        config = open_clip.get_model_config(identifier)
        if config is None:
            raise ValueError(f"unknown open_clip model {model_name!r}; see open_clip.list_models() (the "
                             "eclip-* configs are registered by eclip_monai.networks.model_configs)")
        hf_name = config.get("text_cfg", {}).get("hf_tokenizer_name")
        if hf_name and not os.path.isdir(hf_name):
            raise ValueError(f"{model_name!r} tokenizes with Hugging Face {hf_name!r}, which is not "
                             "available offline; pass a local copy as hf_tokenizer_name")
    return open_clip.get_tokenizer(model_name, context_length=context_length)


def _read_report(value, key: Hashable) -> tuple[str, str | None]:
    """(report text, its file or None): paths are read, other strings are the text itself."""
    is_path = isinstance(value, os.PathLike) or (
        isinstance(value, str) and value.rstrip().endswith(".txt") and "\n" not in value.strip())
    if not is_path:
        if not isinstance(value, str):
            raise CXRDataError(f"expected report text or a .txt path, found {type(value).__name__}",
                               field=str(key))
        return value, None
    path = os.fspath(value).strip()
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(), path
    except OSError as exc:
        raise CXRDataError(f"expected a readable report file, found {type(exc).__name__}: {exc}", path=path,
                           field=str(key)) from exc
