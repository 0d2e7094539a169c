"""Rule-based finding labeler for chest X-ray reports: text → {finding: positive/negative/uncertain/absent}.

Finding-level scores of generated reports need labels for free text without a trained labeler (CheXbert
weights cannot be downloaded here). This is a small CheXpert-style rule labeler for the phantom world's
findings plus Support Devices: mention phrases (with the usual synonyms) are found per sentence, then
NegEx-style triggers decide each mention's status.

Scope rules, per sentence:
- A *pre* trigger ("no", "without", "negative for", "free of", "possible", "may represent", ...) applies to
  the first mention after it, a few words on with no comma, verb or conjunction in between, and then along
  a list of mentions joined only by commas, "and", "or" and modifiers: "no X, Y or large Z" negates all three.
- A *post* trigger ("has resolved", "is not seen", "cannot be excluded", "is likely", ...) applies to the
  nearest mention before it and to the mentions listed right before that one.
- Pseudo-triggers ("no change", "no interval change", "partially resolved", ...) mask the words they contain.
- Uncertainty beats negation on one mention; across a report, positive > uncertain > negative > absent
  (CheXpert's aggregation), and "No Finding" is positive when no pathology is positive or uncertain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from eclip_monai.data.formats import DEFAULT_FINDINGS

POSITIVE, NEGATIVE, UNCERTAIN, ABSENT = "positive", "negative", "uncertain", "absent"
CHEXPERT_CODING = {POSITIVE: 1.0, NEGATIVE: 0.0, UNCERTAIN: -1.0, ABSENT: float("nan")}
SUPPORT_DEVICES, NO_FINDING = "Support Devices", "No Finding"
LABELED_FINDINGS = (*DEFAULT_FINDINGS, SUPPORT_DEVICES, NO_FINDING)

_HEART = r"(?:heart|cardiac|cardiomediastinal)(?: size| silhouette| contours?)?"
MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        r"cardiomegaly",
        rf"(?:enlarged|enlargement of the|increased|large) {_HEART}",
        rf"{_HEART}(?: \w+){{0,4}}? (?:enlarged|enlargement)",
    ),
    "Pleural Effusion": (
        r"(?<!pericardial )(?:pleural )?effusions?",
        r"hydropneumothora(?:x|ces)",
        r"hydrothora(?:x|ces)",
        r"pleural fluid",
    ),
    "Pneumothorax": (r"(?<!hydro)pneumothora(?:x|ces)",),
    "Lung Lesion": (
        r"nodules?", r"nodular (?:opacit(?:y|ies)|densit(?:y|ies))", r"mass(?:es)?", r"lesions?",
        r"tumou?rs?", r"neoplasms?",
    ),
    "Consolidation": (r"consolidat(?:ion|ions|ive|ed)",),
    "Atelectasis": (r"atelecta(?:sis|ses|tic)", r"collapsed?"),
    "Edema": (
        r"edema", r"(?:pulmonary )?vascular congestion", r"(?:pulmonary )?venous (?:congestion|hypertension)",
        r"kerley b lines", r"cephalization",
    ),
    SUPPORT_DEVICES: (
        r"(?:endotracheal|et|nasogastric|ng|orogastric|og|enteric|feeding|chest|tracheostomy|gastric) tubes?",
        r"(?:central venous|central|venous|picc|internal jugular|ij|subclavian|arterial|midline)"
        r" (?:lines?|catheters?)",
        r"picc", r"catheters?", r"pacemakers?", r"pacers?", r"defibrillators?",
        r"(?:pacing|pacer) (?:leads?|wires?)",
        r"(?:sternotomy|surgical) (?:wires?|clips?)", r"stents?", r"port-?a-?cath", r"mediport", r"drains?",
        r"(?:support|monitoring) devices?",
    ),
}
# Phrases that state a finding's absence without a negation word.
NEGATIVE_MENTIONS: dict[str, tuple[str, ...]] = {
    "Cardiomegaly": (
        rf"(?:normal|unremarkable) {_HEART}",
        rf"{_HEART} (?:is |are |appears |remains )(?:\w+ )?(?:normal|unremarkable|within normal limits)",
    ),
    "Pleural Effusion": (r"costophrenic angles are (?:sharp|clear)",),
}
TRIGGERS: dict[tuple[str, str], tuple[str, ...]] = {  # (kind, position) -> phrases
    ("pseudo", "pre"): (
        r"no (?:significant |substantial |interval |appreciable )?(?:change|increase|decrease)",
        r"(?:has |have )?not (?:significantly )?(?:changed|increased|decreased)", r"without (?:\w+ )?change",
        r"partial(?:ly)? resol(?:ved|ution|ving)", r"nearly resolved", r"not only", r"gram negative",
    ),
    ("negative", "pre"): (
        r"no", r"not", r"without", r"negative for", r"free of", r"absence of", r"resolution of",
        r"clear of", r"rules? out", r"(?:interval )?removal of", r"no longer",
    ),
    ("negative", "post"): (
        r"(?:(?:has|have|is|are) )?(?:been )?(?:resolved|cleared|removed)",
        r"(?:(?:is|are) )?(?:not|no longer) (?:seen|identified|present|evident|appreciated|visualized"
        r"|demonstrated|visible|detected)",
        r"(?:is|are) absent", r"(?:has|have) been ruled out", r"ruled out",
    ),
    ("uncertain", "pre"): (
        r"possible", r"possibly", r"may (?:represent|reflect|be|indicate)", r"could (?:represent|reflect|be)",
        r"cannot (?:exclude|rule out)", r"can ?not (?:exclude|rule out)", r"questionable", r"question of",
        r"suspicious for", r"suspected", r"suggestive of", r"suggesting", r"concerning for", r"concern for",
        r"likely", r"probable", r"probably", r"presumed", r"borderline", r"equivocal", r"versus", r"vs",
        r"possibility of", r"differential (?:diagnosis )?includes", r"indeterminate",
    ),
    ("uncertain", "post"): (
        r"(?:cannot|can not|can't) be (?:entirely |completely )?(?:excluded|ruled out)",
        r"(?:is |are )?not (?:entirely |completely )?(?:excluded|ruled out)",
        # only at a clause end: "atelectasis is likely." ("opacity is likely atelectasis" has a pre trigger)
        r"(?:is|are) (?:also )?(?:possible|likely|suspected|questioned|a consideration|considered)"
        r"(?=\s*(?:[.,;:]|$))",
        r"(?:is|are) difficult to exclude",
    ),
}
# Words after which a pre-trigger or a list no longer reaches the next mention: a new clause has begun.
_BREAKERS = frozenset(
    "the there is are was were has have had be been seen noted present appears appear remains remain which "
    "that but however although though while whereas with since given".split()
)
# Between a mention and its post trigger articles and auxiliaries are fine: "effusion on the left has ...".
_POST_BREAKERS = _BREAKERS - {"the", "has", "have", "is", "are", "been", "was", "were"}
_CONNECTORS = frozenset("and or nor and/or".split())
_FIRST_GAP_WORDS, _CHAIN_GAP_WORDS, _POST_GAP_WORDS = 6, 4, 6
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_WORD = re.compile(r"[a-z0-9/'-]+")


def _compile(phrases: Iterable[str]) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(phrases) + r")\b")


@dataclass(frozen=True)
class _Span:
    start: int
    end: int
    name: str  # finding for mentions, kind for triggers
    position: str = ""  # "pre" / "post" for triggers; "negative" for a negative-phrase mention


class ReportLabeler:
    """Label reports for ``MENTIONS``' findings (default: the phantom findings and Support Devices).

    ``mentions`` / ``negative_mentions`` map a finding to regular expressions (lower case, matched on word
    boundaries), so other findings or synonyms can be added without touching the scope rules.
    """

    def __init__(
        self,
        mentions: Mapping[str, Sequence[str]] = MENTIONS,
        negative_mentions: Mapping[str, Sequence[str]] = NEGATIVE_MENTIONS,
    ):
        self.findings = tuple(mentions)
        self._mentions = [(f, _compile(p), "") for f, p in mentions.items()]
        self._mentions += [(f, _compile(p), "negative") for f, p in negative_mentions.items()]
        self._triggers = [(kind, pos, _compile(p)) for (kind, pos), p in TRIGGERS.items()]

    def __call__(self, text: str) -> dict[str, str]:
        """``{finding: status}`` for every finding in ``self.findings`` plus ``"No Finding"``."""
        statuses: dict[str, set[str]] = {f: set() for f in self.findings}
        for sentence in _SENTENCE_END.split(text.lower()):
            for finding, status in self._label_sentence(sentence):
                statuses[finding].add(status)
        labels = {f: next((s for s in (POSITIVE, UNCERTAIN, NEGATIVE) if s in found), ABSENT)
                  for f, found in statuses.items()}
        pathologies = [f for f in self.findings if f != SUPPORT_DEVICES]
        abnormal = any(labels[f] in (POSITIVE, UNCERTAIN) for f in pathologies)
        labels[NO_FINDING] = ABSENT if abnormal else POSITIVE
        return labels

    def label_matrix(self, texts: Iterable[str], findings: Sequence[str] = DEFAULT_FINDINGS) -> np.ndarray:
        """(N, F) float32 in MIMIC-CXR-JPG's CheXpert coding: 1 positive, 0 negative, -1 uncertain, NaN
        absent."""
        rows = [[CHEXPERT_CODING[labels[f]] for f in findings] for labels in map(self, texts)]
        return np.asarray(rows, dtype=np.float32).reshape(-1, len(findings))

    def _label_sentence(self, sentence: str) -> list[tuple[str, str]]:
        mentions = _non_overlapping(
            _Span(m.start(), m.end(), finding, pos)
            for finding, pattern, pos in self._mentions for m in pattern.finditer(sentence))
        if not mentions:
            return []
        triggers = _non_overlapping(
            _Span(m.start(), m.end(), kind, pos)
            for kind, pos, pattern in self._triggers for m in pattern.finditer(sentence))
        marks: list[set[str]] = [set() for _ in mentions]
        blocked = [(t.start, t.end) for t in triggers]
        for trigger in triggers:
            if trigger.name == "pseudo":
                continue
            for i in self._scope(sentence, trigger, mentions, blocked):
                marks[i].add(trigger.name)
        result = []
        for mention, kinds in zip(mentions, marks):
            if mention.position == "negative":
                result.append((mention.name, NEGATIVE))
            else:
                result.append((mention.name, UNCERTAIN if "uncertain" in kinds else
                               NEGATIVE if "negative" in kinds else POSITIVE))
        return result

    @staticmethod
    def _scope(sentence: str, trigger: _Span, mentions: list[_Span], blocked) -> list[int]:
        """Indices of the mentions ``trigger`` applies to (see the module docstring)."""
        inside = [i for i, m in enumerate(mentions) if m.start <= trigger.start and trigger.end <= m.end]
        if inside:  # "the heart is not enlarged": the trigger sits inside the mention
            return inside

        def gap_ok(start: int, end: int, max_words: int, breakers: frozenset, allow_comma: bool) -> bool:
            gap = sentence[start:end]
            crosses_trigger = any(s < end and start < e for s, e in blocked)
            if crosses_trigger or (not allow_comma and re.search(r"[,;]", gap)):
                return False
            words = _WORD.findall(gap)
            return len(words) <= max_words and not breakers.intersection(words)

        hits: list[int] = []
        if trigger.position == "pre":
            after = [i for i, m in enumerate(mentions) if m.start >= trigger.end]
            if after and gap_ok(trigger.end, mentions[after[0]].start, _FIRST_GAP_WORDS, _BREAKERS, False):
                hits.append(after[0])
                for prev, nxt in zip(after, after[1:]):
                    if not gap_ok(mentions[prev].end, mentions[nxt].start, _CHAIN_GAP_WORDS, _BREAKERS, True):
                        break
                    hits.append(nxt)
        else:
            before = [i for i, m in enumerate(mentions) if m.end <= trigger.start][::-1]
            nearest = mentions[before[0]] if before else None
            if nearest and gap_ok(nearest.end, trigger.start, _POST_GAP_WORDS, _POST_BREAKERS, False):
                hits.append(before[0])
                for nxt, prev in zip(before, before[1:]):  # only a bare list: "X, Y and Z have resolved"
                    gap = sentence[mentions[prev].end : mentions[nxt].start]
                    if not set(_WORD.findall(gap)) <= _CONNECTORS:
                        break
                    hits.append(prev)
        return hits


def _non_overlapping(spans: Iterable[_Span]) -> list[_Span]:
    """Leftmost-longest spans that do not overlap, in text order."""
    kept: list[_Span] = []
    for span in sorted(spans, key=lambda s: (s.start, s.start - s.end)):
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept
