"""Report text → token ids for the text tower, offline.

Reports arrive as text or as a path to a MIMIC-style ``.txt``; the FINDINGS and IMPRESSION sections are what
CLIP trains on. The tokenizer itself is the text tower's (``networks.build_tokenizer``), passed in.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple_rep

from eclip_monai.data.reports import DEFAULT_SECTIONS, extract_report_text
from eclip_monai.errors import CXRDataError

__all__ = ["ExtractReportSectiond", "TokenizeText", "TokenizeTextd"]


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
