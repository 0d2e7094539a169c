"""The pre-registered protocol of an arm-vs-arm study, read from JSON and checked before anything runs.

A protocol fixes, before the first comparison run: the training regime (a bundle overlay, which also names the
phantom world and its parameters), the arms (overlays on top of it), the paired seeds, the checkpoint that is
evaluated, one primary endpoint, the secondary endpoints (Holm-adjusted within each contrast), the learning
check the baseline must pass for the comparison to mean anything, and the ablations.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eclip_monai.errors import CXRDataError

__all__ = ["Endpoint", "Protocol", "load_protocol", "lookup"]


@dataclass(frozen=True)
class Endpoint:
    """A named number in a run's results, found by a ``/``-separated ``path`` (``dataset/task/metric``)."""

    name: str
    path: str


@dataclass(frozen=True)
class Protocol:
    name: str
    version: int
    regime: str
    checkpoint_file: str
    checkpoint_key: str
    seeds: tuple[int, ...]
    arms: dict[str, tuple[str, ...]]
    contrasts: tuple[tuple[str, str], ...]
    primary: Endpoint
    secondary: tuple[Endpoint, ...]
    descriptive: tuple[Endpoint, ...]
    learning_check: dict[str, Any]
    ablation_seeds: tuple[int, ...]
    ablation_reference: str
    ablation_arms: dict[str, tuple[str, ...]]
    confidence: float
    source: dict

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        return (self.primary, *self.secondary, *self.descriptive)

    def overlays(self, arm: str) -> tuple[str, ...]:
        """The regime followed by the arm's own overlays, in merge order."""
        arms = {**self.arms, **self.ablation_arms}
        if arm not in arms:
            raise KeyError(f"unknown arm {arm!r}; the protocol has {sorted(arms)}")
        return (self.regime, *arms[arm])


def load_protocol(path: str | os.PathLike, root: str | os.PathLike = ".") -> Protocol:
    """Read and check a protocol JSON; overlay paths are relative to ``root`` and must exist."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CXRDataError(f"expected a readable protocol JSON, found: {e}", path=path) from e

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        if not isinstance(raw.get(key), kind):
            raise CXRDataError(f"expected {key!r} of type {kind}, found {raw.get(key)!r}", path=path, field=key)
        return raw[key]

    def endpoint(entry: Mapping, field: str) -> Endpoint:
        if not isinstance(entry, Mapping) or not {"name", "path"} <= set(entry):
            raise CXRDataError(f"expected {{'name', 'path'}}, found {entry!r}", path=path, field=field)
        return Endpoint(str(entry["name"]), str(entry["path"]))

    arms = {k: tuple(v) for k, v in need("arms", dict).items()}
    ablations = raw.get("ablations", {})
    ablation_arms = {k: tuple(v) for k, v in ablations.get("arms", {}).items()}
    contrasts = tuple(tuple(c) for c in need("contrasts", list))
    for contrast in contrasts:
        if len(contrast) != 2 or not set(contrast) <= set(arms):
            raise CXRDataError(f"expected two of the arms {sorted(arms)}, found {list(contrast)}",
                               path=path, field="contrasts")
    reference = ablations.get("reference", "")
    if ablation_arms and reference not in arms:
        raise CXRDataError(f"expected one of the arms {sorted(arms)}, found {reference!r}",
                           path=path, field="ablations.reference")
    seeds = tuple(int(s) for s in need("seeds", list))
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise CXRDataError(f"expected at least two distinct seeds, found {list(seeds)}", path=path, field="seeds")
    checkpoint = need("checkpoint", dict)
    protocol = Protocol(
        name=need("name", str), version=int(need("version", int)), regime=need("regime", str),
        checkpoint_file=str(checkpoint.get("file", "final.pt")), checkpoint_key=str(checkpoint.get("key", "network")),
        seeds=seeds, arms=arms, contrasts=contrasts,
        primary=endpoint(need("primary", dict), "primary"),
        secondary=tuple(endpoint(e, "secondary") for e in need("secondary", list)),
        descriptive=tuple(endpoint(e, "descriptive") for e in raw.get("descriptive", [])),
        learning_check=dict(raw.get("learning_check", {})),
        ablation_seeds=tuple(int(s) for s in ablations.get("seeds", ())),
        ablation_reference=reference, ablation_arms=ablation_arms,
        confidence=float(raw.get("confidence", 0.95)), source=raw,
    )
    for overlay in {protocol.regime, *(o for arm in {**arms, **ablation_arms}.values() for o in arm)}:
        if not (Path(root) / overlay).is_file():
            raise CXRDataError("overlay named by the protocol not found", path=Path(root) / overlay)
    return protocol


def lookup(results: Mapping, endpoint: Endpoint) -> float:
    """The endpoint's number in a run's nested results; a clear error naming the missing step otherwise."""
    value: Any = results
    for step in endpoint.path.split("/"):
        if not isinstance(value, Mapping) or step not in value:
            raise KeyError(f"endpoint {endpoint.name!r}: no {step!r} under {endpoint.path!r} in the run's results")
        value = value[step]
    return float(value)
