"""Prompt wording, in one place: how each finding is put into words for the text tower.

Two uses. The zero-shot classifier of the bundle (``networks.zero_shot``) judges each finding against its
negation with a few report phrasings per finding (``FINDING_TERMS``, ``finding_prompts``). The evaluation sets
describe a class by every "{severity} {subtype} {finding} {location}" combination of its word lists, in the
style radiologists write (GLoRIA / CheXzero-style ensembles: ``PromptSpec``).

A class's text embedding is the mean of its normalised prompt embeddings (``zero_shot.class_embeddings``), so
many phrasings average out wording that the text tower happens to prefer.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from eclip_monai.data.formats import CXR14_CLASSES

_BASES = ("at the left lung base", "at the right lung base", "at both lung bases")
_LOBES = ("in the left lower lobe", "in the right lower lobe", "in the right middle lobe", "in the lingula")
_UPPER = ("in the right upper lobe", "in the left upper lobe")


@dataclass(frozen=True)
class PromptSpec:
    """Word lists of one class; "" in a list means the part may be left out."""

    finding: tuple[str, ...]
    severity: tuple[str, ...] = ("",)
    subtype: tuple[str, ...] = ("",)
    location: tuple[str, ...] = ("",)

    def expand(self) -> list[str]:
        """Every combination, in a fixed order, with surplus spaces removed and duplicates dropped."""
        combos = itertools.product(self.severity, self.subtype, self.finding, self.location)
        return list(dict.fromkeys(" ".join(" ".join(words).split()) for words in combos))


def expand_prompts(specs: Mapping[str, PromptSpec]) -> dict[str, list[str]]:
    """``class name -> prompts`` for a mapping of prompt specs (class order kept)."""
    return {name: spec.expand() for name, spec in specs.items()}


# Keys follow the class order of formats.py (CHEXPERT_5X200_CLASSES), which eval-set labels index.
CHEXPERT_5X200_PROMPTS: dict[str, PromptSpec] = {
    "Atelectasis": PromptSpec(
        finding=("atelectasis",),
        severity=("", "mild", "minimal", "moderate"),
        subtype=("", "subsegmental", "linear", "plate-like", "bibasilar", "patchy"),
        location=("", *_BASES, *_LOBES),
    ),
    "Cardiomegaly": PromptSpec(
        finding=("cardiomegaly", "enlargement of the cardiac silhouette", "enlarged heart"),
        severity=("", "mild", "moderate", "severe"),
        subtype=("", "stable", "new"),
    ),
    "Consolidation": PromptSpec(
        finding=("consolidation",),
        severity=("", "small", "focal", "extensive"),
        subtype=("", "airspace", "lobar", "patchy", "dense"),
        location=("", *_BASES, *_LOBES, *_UPPER),
    ),
    "Edema": PromptSpec(
        finding=("pulmonary edema", "edema"),
        severity=("", "mild", "moderate", "severe"),
        subtype=("", "interstitial", "alveolar", "perihilar"),
        location=("", "bilaterally", "in both lungs"),
    ),
    "Pleural Effusion": PromptSpec(
        finding=("pleural effusion", "effusion"),
        severity=("", "trace", "small", "moderate", "large"),
        subtype=("", "left", "right", "bilateral", "layering"),
    ),
}

RSNA_PROMPTS: dict[str, PromptSpec] = {
    "Normal": PromptSpec(
        finding=("no acute cardiopulmonary process", "the lungs are clear", "no focal consolidation",
                 "no evidence of pneumonia", "normal chest radiograph", "no airspace opacity"),
    ),
    "Pneumonia": PromptSpec(
        finding=("pneumonia", "consolidation", "airspace opacity", "opacity consistent with pneumonia"),
        severity=("", "mild", "focal", "multifocal"),
        location=("", *_BASES, *_LOBES, *_UPPER),
    ),
}

_CXR14_WORDING = {"Effusion": "pleural effusion", "Pleural_Thickening": "pleural thickening",
                  "Hernia": "hiatal hernia"}
CXR14_PROMPTS: dict[str, PromptSpec] = {
    name: PromptSpec(finding=(_CXR14_WORDING.get(name, name.lower()),)) for name in CXR14_CLASSES
}

# The prompt ensemble of each evaluation set, by the set's name in ``metrics.json``.
PROMPT_SETS: dict[str, dict[str, PromptSpec]] = {
    "chexpert_5x200": CHEXPERT_5X200_PROMPTS,
    "rsna_pneumonia": RSNA_PROMPTS,
    "cxr14": CXR14_PROMPTS,
}


# Report wording of each CheXpert observation; a finding not listed here is prompted by its lower-cased name.
FINDING_TERMS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("atelectasis", "basilar atelectasis"),
    "Cardiomegaly": ("cardiomegaly", "enlarged cardiac silhouette"),
    "Consolidation": ("consolidation", "focal consolidation"),
    "Edema": ("pulmonary edema", "interstitial edema"),
    "Enlarged Cardiomediastinum": ("enlarged cardiomediastinum", "widened mediastinum"),
    "Fracture": ("rib fracture", "fracture"),
    "Lung Lesion": ("pulmonary nodule", "lung nodule"),
    "Lung Opacity": ("lung opacity", "airspace opacity"),
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pleural Other": ("pleural thickening",),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax", "apical pneumothorax"),
    "Support Devices": ("support devices", "endotracheal tube"),
}


def finding_prompts(findings: Sequence[str], terms: Mapping[str, Sequence[str]] | None = None
                    ) -> dict[str, tuple[list[str], list[str]]]:
    """``finding -> (positive prompts, negative prompts)``: each term, and "no <term>"."""
    terms = {**FINDING_TERMS, **(terms or {})}
    prompts = {}
    for finding in findings:
        words = list(terms.get(finding, (finding.lower(),)))
        if not words:
            raise ValueError(f"finding {finding!r} has an empty list of prompt terms")
        prompts[finding] = (words, [f"no {word}" for word in words])
    return prompts
