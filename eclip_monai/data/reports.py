"""Section extraction from MIMIC-CXR style free-text reports.

MIMIC reports are upper-case headed sections (``FINDINGS:``, ``IMPRESSION:``...) with the text either on the
heading line or on the lines after it. CLIP training uses FINDINGS and IMPRESSION; everything else (indication,
technique, comparison) leaks no image content and is dropped.
"""

from __future__ import annotations

import re

from eclip_monai.errors import CXRDataError

# A heading is an upper-case phrase at the start of a line followed by a colon ("FINDINGS:", "PA AND LATERAL:").
_HEADING = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]{2,40}):", re.MULTILINE)
_ALIASES = {"FINDING": "findings", "FINDINGS": "findings", "IMPRESSION": "impression", "IMPRESSIONS": "impression",
            "CONCLUSION": "impression", "SUMMARY": "impression"}
DEFAULT_SECTIONS = ("findings", "impression")


def split_sections(text: str) -> dict[str, str]:
    """Return ``{section name (lower case): whitespace-normalised text}`` for every heading found.

    Known synonyms (``IMPRESSIONS``, ``CONCLUSION``) map onto ``findings`` / ``impression``; text before the
    first heading is kept under ``"preamble"``.
    """
    sections: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    bounds = [m.start() for m in matches] + [len(text)]
    preamble = text[: bounds[0]]
    if preamble.strip():
        sections["preamble"] = _squash(preamble)
    for match, end in zip(matches, bounds[1:]):
        name = match.group(1).strip()
        key = _ALIASES.get(name, name.lower())
        body = _squash(text[match.end() : end])
        sections[key] = f"{sections[key]} {body}".strip() if key in sections else body
    return sections


def extract_report_text(text: str, sections=DEFAULT_SECTIONS, *, path=None, fallback_to_full: bool = False) -> str:
    """Join the requested ``sections`` (in order) into one string for the text tower.

    Raises:
        CXRDataError: when none of the sections holds any text (an empty report would train on nothing);
            with ``fallback_to_full`` the whole report (without the preamble) is used instead.
    """
    parts = split_sections(text)
    picked = [parts[s] for s in sections if parts.get(s)]
    if picked:
        return " ".join(picked)
    if fallback_to_full:
        rest = " ".join(v for k, v in parts.items() if k != "preamble" and v) or _squash(text)
        if rest:
            return rest
    found = ", ".join(k for k, v in parts.items() if v) or "nothing"
    raise CXRDataError(f"no text in sections {list(sections)}; found {found}", path=path, field="report")


def _squash(text: str) -> str:
    return " ".join(text.split())
