"""MIMIC-CXR style reports, REFLACX dictations and CheXpert labels that agree with the drawn findings.

Each sentence carries the labels it asserts, so the label row is exactly what a CheXpert-style labeler reads
from the text: a drawn finding is 1.0 (stated) or -1.0 (hedged), an absent one 0.0 (negated) or blank
(not mentioned). Several phrasings per finding, with side, zone and severity words, keep a text encoder from
matching templates instead of meaning.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import numpy as np

from eclip_monai.data.formats import CHEXPERT_LABELS
from eclip_monai.data.phantom.devices import Device
from eclip_monai.data.phantom.findings import Finding

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
OPACITY, PNEUMONIA = "Lung Opacity", "Pneumonia"

# (template, extra labels the sentence asserts).
# Fields: sev, Sev, adv, side, Side, zone, mm, a_mm, s, a, is_are (see _describe).
_STATED = {
    "Cardiomegaly": [
        ("The heart is {adv} enlarged.", {}),
        ("{Sev} cardiomegaly.", {}),
        ("There is {sev} enlargement of the cardiac silhouette.", {}),
        ("Cardiac silhouette is {adv} enlarged, consistent with cardiomegaly.", {}),
    ],
    "Pleural Effusion": [
        ("{Sev} {side} pleural effusion{s}.", {}),
        ("There {is_are} {a}{sev} {side} pleural effusion{s}, blunting the costophrenic angle{s}.", {}),
        ("{Sev} {side} pleural effusion{s} with a basilar meniscus.", {}),
        ("Blunting of the {side} costophrenic angle{s} consistent with {a}{sev} pleural effusion{s}.", {}),
    ],
    "Pneumothorax": [
        ("{Sev} {side} apical pneumothorax.", {}),
        ("There is a {sev} {side} pneumothorax with a visible pleural line at the apex.", {}),
        ("{Side} apical pneumothorax, {sev} in size.", {}),
        ("{Sev} {side}-sided pneumothorax along the apex and lateral chest wall.", {}),
    ],
    "Lung Lesion": [
        ("{mm} mm nodule in the {side} {zone} lung.", {}),
        ("There is {a_mm} {mm} mm {side} {zone} lung nodule.", {}),
        ("Rounded {mm} mm nodule projecting over the {side} {zone} lung zone.", {}),
        ("Well-circumscribed {mm} mm pulmonary nodule in the {side} {zone} lung; CT is recommended.", {}),
    ],
    "Consolidation": [
        ("Consolidation in the {side} {zone} lung with air bronchograms.", {}),
        ("Patchy {side} {zone} lung consolidation.", {}),
        ("{Sev} focal consolidation in the {side} {zone} lung, concerning for pneumonia.",
         {PNEUMONIA: UNCERTAIN}),
        ("Airspace consolidation in the {side} {zone} lung consistent with pneumonia.",
         {PNEUMONIA: POSITIVE}),
    ],
    "Atelectasis": [
        ("Plate-like atelectasis at the {side} lung base.", {}),
        ("{Sev} {side} basilar atelectasis.", {}),
        ("Linear opacity at the {side} base consistent with subsegmental atelectasis.", {OPACITY: POSITIVE}),
        ("Streaky {side} basilar atelectasis.", {}),
    ],
    "Edema": [
        ("{Sev} pulmonary edema.", {}),
        ("Perihilar haziness consistent with {sev} pulmonary edema.", {}),
        ("{Sev} interstitial pulmonary edema with perihilar predominance.", {}),
        ("Bilateral perihilar opacities consistent with {sev} pulmonary edema.", {OPACITY: POSITIVE}),
    ],
}
_HEDGED = {
    "Cardiomegaly": [
        ("Possible {sev} cardiomegaly.", {}),
        ("The heart may be {adv} enlarged, though this could be accentuated by technique.", {}),
        ("Cannot exclude {sev} cardiomegaly.", {}),
    ],
    "Pleural Effusion": [
        ("Possible {sev} {side} pleural effusion{s}.", {}),
        ("Blunting of the {side} costophrenic angle{s} may represent {a}{sev} effusion{s}.", {}),
        ("Cannot exclude {a}{sev} {side} pleural effusion{s}.", {}),
    ],
    "Pneumothorax": [
        ("Possible {sev} {side} apical pneumothorax.", {}),
        ("Cannot exclude a {sev} {side} apical pneumothorax.", {}),
        ("Subtle lucency at the {side} apex may represent a pneumothorax.", {}),
    ],
    "Lung Lesion": [
        ("Possible {mm} mm nodule in the {side} {zone} lung.", {}),
        ("A density of {mm} mm in the {side} {zone} lung may represent a pulmonary nodule.", {}),
        ("Questionable {side} {zone} lung nodule measuring {mm} mm.", {}),
    ],
    "Consolidation": [
        ("Patchy opacity in the {side} {zone} lung may represent early consolidation.", {OPACITY: POSITIVE}),
        ("Possible consolidation in the {side} {zone} lung.", {}),
        ("Cannot exclude consolidation in the {side} {zone} lung.", {}),
    ],
    "Atelectasis": [
        ("Linear opacity at the {side} base likely reflects atelectasis.", {OPACITY: POSITIVE}),
        ("{Side} basilar opacity may represent atelectasis.", {OPACITY: POSITIVE}),
        ("Possible minor {side} basilar atelectasis.", {}),
    ],
    "Edema": [
        ("Mild perihilar haziness may represent early pulmonary edema.", {}),
        ("Possible {sev} pulmonary edema.", {}),
        ("Vascular indistinctness; cannot exclude {sev} pulmonary edema.", {}),
    ],
}
_NEGATED_TERMS = {"Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax",
                  "Consolidation": "focal consolidation", "Edema": "pulmonary edema",
                  "Lung Lesion": "suspicious pulmonary nodule", "Atelectasis": "atelectasis"}
_NEGATION_RATES = {"Pleural Effusion": 0.75, "Pneumothorax": 0.75, "Consolidation": 0.7, "Edema": 0.4,
                   "Cardiomegaly": 0.6, "Lung Lesion": 0.2, "Atelectasis": 0.15}
_NORMAL_HEART = ["Heart size is normal.", "The cardiac silhouette is not enlarged.", "Normal heart size.",
                 "No cardiomegaly."]
_NEGATION_FORMS = ["No {}.", "There is no {}.", "No evidence of {}."]
_CLEAR_LUNGS = ["The lungs are clear.", "Lungs are well expanded and clear."]
_CONTOURS = ["Hilar contours are unremarkable.",
             "The hilar and mediastinal contours are within normal limits."]
_BONES = ["No acute osseous abnormality.", "Osseous structures are intact.", ""]
_NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                       "Normal chest radiograph.", "No evidence of acute disease."]
_DEVICE_SENTENCES = {
    "endotracheal tube": "Endotracheal tube terminates approximately {cm} cm above the carina.",
    "central venous catheter": "Right internal jugular central venous catheter terminates in the mid SVC.",
    "pacemaker": "Left chest wall pacemaker with leads terminating in the right atrium and right ventricle.",
    "enteric tube": "Enteric tube courses below the diaphragm with the tip in the stomach.",
}
_INDICATIONS = ["cough and fever", "shortness of breath", "chest pain", "hypoxia", "leukocytosis",
                "fall, evaluate for injury", "history of CHF with worsening dyspnea",
                "pre-operative evaluation", "status post line placement"]
_QUESTIONS = ["Eval for pneumonia", "Evaluate for acute process", "eval for effusion", "?pneumothorax",
              "assess for interval change", ""]
_SEVERITY_ADVERBS = {"mild": "mildly", "moderate": "moderately", "severe": "severely", "small": "slightly",
                     "large": "markedly"}
_SEVERITY_ORDER = ("mild", "small", "moderate", "severe", "large")
LAYOUT_RATES = {"full": 0.935, "impression_only": 0.05, "no_sections": 0.015}


@dataclass(frozen=True)
class Report:
    text: str  # the whole report file
    findings: str  # FINDINGS section ("" when absent)
    impression: str  # IMPRESSION section ("" when absent)
    indication: str
    examination: str  # e.g. CHEST (PA AND LAT), also MIMIC's PerformedProcedureStepDescription
    layout: str  # full / impression_only / no_sections (the reader must skip the last)
    labels: dict[str, float | None]  # CheXpert label -> 1.0 / 0.0 / -1.0 / None (blank)


def compose_report(
    rng: np.random.Generator,
    findings: list[Finding],
    devices: list[Device],
    *,
    view: str,
    has_lateral: bool,
    sex: str,
    age: int,
    mm_per_pixel: float,
    layout: str | None = None,
) -> Report:
    """A MIMIC-CXR style report describing ``findings`` and the labelled ``devices`` of one study."""
    labels: dict[str, float | None] = dict.fromkeys(CHEXPERT_LABELS)
    described = _describe(rng, findings, labels, mm_per_pixel)
    negated = _negations(rng, findings, labels)
    device_sentences = _devices(rng, devices, labels)
    if not findings:
        labels["No Finding"] = POSITIVE
    normal_lungs = not any(f.name != "Cardiomegaly" for f in findings)
    body = described + device_sentences + negated
    body += [str(rng.choice(_CLEAR_LUNGS))] if normal_lungs else []
    body += [str(rng.choice(_CONTOURS)), str(rng.choice(_BONES))]
    body = [s for s in body if s]
    if findings:
        again = _describe(rng, findings, labels, mm_per_pixel)
        numbered = len(again) > 1 and rng.random() < 0.5
        impression = "\n".join(f"{i}. {s}" for i, s in enumerate(again, 1)) if numbered else " ".join(again)
    else:
        impression = str(rng.choice(_NORMAL_IMPRESSIONS))

    layout = layout or str(rng.choice(list(LAYOUT_RATES), p=list(LAYOUT_RATES.values())))
    person = "woman" if sex == "F" else "man"
    question = str(rng.choice(_QUESTIONS))
    indication = f"___-year-old {person} with {rng.choice(_INDICATIONS)}."
    indication += f"  // {question}" if question else ""
    if view == "AP":
        exam, technique = "CHEST (PORTABLE AP)", "Portable AP upright chest radiograph"
    elif has_lateral:
        exam, technique = "CHEST (PA AND LAT)", "Chest PA and lateral"
    else:
        exam, technique = "CHEST (PA)", "Single frontal view of the chest"
    comparison = str(rng.choice(["None.", "___", "Chest radiograph from ___."]))
    head = [" " * 33 + "FINAL REPORT", f" EXAMINATION:  {exam}", " ", f" INDICATION:  {indication}", " ",
            f" TECHNIQUE:  {technique}", " ", f" COMPARISON:  {comparison}", " "]
    findings_text = " ".join(body)
    if layout == "full":
        sections = [("FINDINGS", findings_text), ("IMPRESSION", impression)]
    elif layout == "impression_only":
        sections, findings_text = [("IMPRESSION", f"{findings_text}\n{impression}")], ""
        impression = sections[0][1]
    else:  # the findings are there, under a heading that is neither FINDINGS nor IMPRESSION
        sections = [("PA AND LATERAL VIEWS OF THE CHEST", f"{findings_text}\n{impression}")]
        findings_text = impression = ""
    lines = list(head)
    for heading, text in sections:
        lines += [f" {heading}:", " ", _wrap(text), " "]
    flat = " ".join(impression.split("\n"))
    return Report("\n".join(lines) + "\n", findings_text, flat, indication, exam, layout, labels)


def dictation(rng: np.random.Generator, findings: list[Finding], devices: list[Device],
              mm_per_pixel: float) -> str:
    """A REFLACX-like transcription: the same facts, spoken, in lower case without section headings."""
    labels = dict.fromkeys(CHEXPERT_LABELS)
    sentences = _describe(rng, findings, labels, mm_per_pixel) + _devices(rng, devices, labels)
    sentences += _negations(rng, findings, labels)
    if not findings:
        sentences.append(str(rng.choice(_NORMAL_IMPRESSIONS)))
    return " ".join(s[0].lower() + s[1:] for s in sentences) + "\n"


def _wrap(text: str) -> str:
    """MIMIC's layout: lines of at most 78 characters, indented by one space; numbered items on own lines."""
    return "\n".join(textwrap.fill(p, width=78, initial_indent=" ", subsequent_indent=" ")
                     for p in text.split("\n"))


def _group(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.name, []).append(finding)
    return grouped


def _describe(rng, findings, labels, mm_per_pixel) -> list[str]:
    """One sentence per finding name (both sides in one sentence), stated or hedged, with its labels."""
    sentences = []
    for name, group in _group(findings).items():
        first = group[0]
        sides = {f.side for f in group}
        side = "bilateral" if len(sides) > 1 else (first.side or "")
        plural = side == "bilateral"
        severity = max((f.severity for f in group), key=_SEVERITY_ORDER.index)
        mm = max(1, round(2 * first.rx * mm_per_pixel))
        fields = {
            "sev": severity, "Sev": severity.capitalize(), "adv": _SEVERITY_ADVERBS[severity], "side": side,
            "Side": side.capitalize(), "zone": first.zone or "", "mm": mm,
            "a_mm": "an" if mm in (8, 11, 18) or 80 <= mm < 90 else "a",
            "s": "s" if plural else "", "a": "" if plural else "a ", "is_are": "are" if plural else "is",
        }
        bank = _STATED if first.certain else _HEDGED
        template, extras = bank[name][int(rng.integers(len(bank[name])))]
        sentences.append(template.format(**fields))
        _assert(labels, name, POSITIVE if first.certain else UNCERTAIN)
        for label, value in extras.items():
            _assert(labels, label, value)
    return sentences


def _assert(labels: dict, label: str, value: float) -> None:
    """Stated beats hedged beats negated, as in the CheXpert labeler's aggregation."""
    rank = {None: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}
    if rank[value] > rank[labels[label]]:
        labels[label] = value


def _negations(rng, findings, labels) -> list[str]:
    present = {f.name for f in findings}
    negated = [n for n, rate in _NEGATION_RATES.items() if n not in present and rng.random() < rate]
    sentences = []
    if "Cardiomegaly" in negated:
        sentences.append(str(rng.choice(_NORMAL_HEART)))
    terms = [_NEGATED_TERMS[n] for n in negated if n != "Cardiomegaly"]
    if terms:
        comma = "," if len(terms) > 2 else ""
        listed = terms[0] if len(terms) == 1 else f"{', '.join(terms[:-1])}{comma} or {terms[-1]}"
        sentences.append(str(rng.choice(_NEGATION_FORMS)).format(listed))
    for name in negated:
        _assert(labels, name, NEGATIVE)
    return sentences


def _devices(rng, devices, labels) -> list[str]:
    sentences = [_DEVICE_SENTENCES[d.name].format(cm=int(rng.integers(3, 6))) for d in devices if d.labelled]
    if sentences:
        _assert(labels, "Support Devices", POSITIVE)
    return sentences
