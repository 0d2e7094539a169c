"""Zero-shot prompt sets, as data: a class is described by every "{severity} {subtype} {finding} {location}"
combination of its word lists, in the style radiologists write (GLoRIA / CheXzero-style ensembles).

A class's text embedding is the mean of its normalised prompt embeddings (``zero_shot.class_embeddings``), so
many phrasings average out wording that the text tower happens to prefer.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
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
