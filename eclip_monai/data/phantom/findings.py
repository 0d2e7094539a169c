"""Findings with known location and size, drawn into a frontal chest's layers.

Each finding is small or low-contrast enough that a model must look in the right place: a nodule is 2-3% of
the image width at a few percent contrast, a small effusion only blunts the costophrenic angle. Every drawn
finding returns an axis-aligned ellipse (centre and radii in pixels, x = column, y = row) that covers it:
the ground truth that reports, labels and gaze are generated from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from eclip_monai.data.formats import DEFAULT_FINDINGS
from eclip_monai.data.phantom.anatomy import (
    SIDES,
    Chest,
    Layers,
    blurred_mask,
    lung_bounds,
    ramp,
    smooth_noise,
)

SIZE_SEVERITIES = ("small", "moderate", "large")  # effusion, pneumothorax
GRADE_SEVERITIES = ("mild", "moderate", "severe")
NODULE_SEVERITIES = ("small", "moderate")
_WEIGHTS = {"Cardiomegaly": 1.0, "Pleural Effusion": 1.2, "Pneumothorax": 0.6, "Lung Lesion": 0.8,
            "Consolidation": 1.0, "Atelectasis": 1.0, "Edema": 0.7}
_ZONES = ("upper", "mid", "lower")


@dataclass(frozen=True)
class FindingSpec:
    """What to draw, before it is placed: ``side`` is the patient's, or ``bilateral`` / ``None``."""

    name: str
    side: str | None
    severity: str
    zone: str | None = None
    certain: bool = True  # False: the report hedges ("possible", "cannot exclude") and labels it -1.0


@dataclass(frozen=True)
class Finding:
    """One drawn finding: a bilateral spec yields one finding per side, each with its own ellipse."""

    name: str
    x: float
    y: float
    rx: float
    ry: float
    side: str | None
    severity: str
    zone: str | None
    certain: bool

    def as_truth(self) -> dict:
        record = asdict(self)
        record.update({k: round(float(record[k]), 1) for k in ("x", "y", "rx", "ry")})
        return record


def cardiothoracic_ratio(rng: np.random.Generator, specs: list[FindingSpec]) -> float:
    """Normal hearts stay below 0.49; cardiomegaly is graded 0.54-0.68."""
    spec = next((s for s in specs if s.name == "Cardiomegaly"), None)
    if spec is None:
        return rng.uniform(0.40, 0.48)
    low = {"mild": 0.54, "moderate": 0.58, "severe": 0.63}[spec.severity]
    return rng.uniform(low, low + 0.04)


def make_spec(rng: np.random.Generator, name: str, *, certain: bool | None = None) -> FindingSpec:
    """A random side, severity and zone for ``name``; mild findings are hedged more often in the report."""
    if name not in DEFAULT_FINDINGS:
        raise ValueError(f"unknown phantom finding {name!r}; expected one of {DEFAULT_FINDINGS}")
    severities = {"Pleural Effusion": SIZE_SEVERITIES, "Pneumothorax": SIZE_SEVERITIES,
                  "Lung Lesion": NODULE_SEVERITIES}.get(name, GRADE_SEVERITIES)
    severity = str(rng.choice(severities, p=[0.5, 0.5] if len(severities) == 2 else [0.45, 0.35, 0.2]))
    side = str(rng.choice(SIDES))
    zone = str(rng.choice(_ZONES))
    if name == "Cardiomegaly":
        side, zone = None, None
    elif name == "Edema":
        side, zone = "bilateral", "perihilar"
    elif name == "Pleural Effusion":
        side = "bilateral" if rng.random() < 0.3 else side
        zone = "basal"
    elif name == "Pneumothorax":
        zone = "apical"
    elif name == "Atelectasis":
        zone = "basal"
    if certain is None:
        certain = rng.random() > (0.3 if severity in ("mild", "small") else 0.12)
    return FindingSpec(name, side, severity, zone, bool(certain))


def sample_specs(rng: np.random.Generator, normal_rate: float = 0.3) -> list[FindingSpec]:
    """None with probability ``normal_rate``, else 1-3 distinct findings (no effusion by a pneumothorax)."""
    if rng.random() < normal_rate:
        return []
    count = int(rng.choice([1, 2, 3], p=[0.5, 0.33, 0.17]))
    weights = np.array([_WEIGHTS[n] for n in DEFAULT_FINDINGS])
    names = rng.choice(DEFAULT_FINDINGS, size=count, replace=False, p=weights / weights.sum())
    specs = [make_spec(rng, str(n)) for n in names]
    pneumothorax = next((s for s in specs if s.name == "Pneumothorax"), None)
    if pneumothorax:
        clash = (pneumothorax.side, "bilateral")
        specs = [s for s in specs if not (s.name == "Pleural Effusion" and s.side in clash)]
    return specs


def draw_findings(chest: Chest, layers: Layers, rng: np.random.Generator, specs: list[FindingSpec]
                  ) -> list[Finding]:
    """Draw every spec into ``layers`` (in place) and return the ground-truth ellipses."""
    found: list[Finding] = []
    for spec in specs:
        sides = SIDES if spec.side == "bilateral" else (spec.side,)
        for side in sides:
            x, y, rx, ry = _DRAW[spec.name](chest, layers, rng, spec, side)
            found.append(Finding(spec.name, x, y, rx, ry, side, spec.severity, spec.zone, spec.certain))
    return found


def _grade(spec: FindingSpec, values: tuple[float, ...]) -> float:
    order = {s: i for group in (SIZE_SEVERITIES, GRADE_SEVERITIES) for i, s in enumerate(group)}
    return values[min(order[spec.severity], len(values) - 1)]


def _tilted_extent(rx: float, ry: float, angle: float) -> tuple[float, float]:
    """Half-width and half-height of the box around an ellipse tilted by ``angle``."""
    return np.hypot(rx * np.cos(angle), ry * np.sin(angle)), np.hypot(rx * np.sin(angle), ry * np.cos(angle))


def _box_ellipse(mask: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float]:
    """Centre and half-extents of the box around ``mask > threshold``."""
    rows, cols = np.nonzero(mask > threshold)
    if rows.size == 0:
        rows, cols = np.unravel_index([int(np.argmax(mask))], mask.shape)
    x0, x1, y0, y1 = cols.min(), cols.max() + 1, rows.min(), rows.max() + 1
    return (x0 + x1) / 2, (y0 + y1) / 2, max((x1 - x0) / 2, 2.0), max((y1 - y0) / 2, 2.0)


def _cardiomegaly(chest, layers, rng, spec, side):
    """Already drawn by the enlarged heart of :func:`cardiothoracic_ratio`; report the heart's box."""
    x, y, rx, ry, angle = chest.heart
    return (x, y, *_tilted_extent(rx, ry, angle))


def _effusion(chest, layers, rng, spec, side):
    """Fluid in the costophrenic recess with a meniscus that climbs the lateral wall."""
    u, _, _ = lung_bounds(chest, side)
    height = chest.height(side)
    # The meniscus is measured up from the hemidiaphragm under each column, so the fluid lies over the lung
    # base (filling the costophrenic angle first) instead of below the dome where no lung is seen.
    floor = chest.diaphragm(side, np.clip(u, 0, 1).astype(np.float32))
    level = height * _grade(spec, (0.09, 0.18, 0.3)) * rng.uniform(0.85, 1.15)
    top = floor - level * (0.45 + 0.55 * np.clip(u / 0.95, 0, 1) ** 2)
    fluid = ramp((chest.Y - top) / 2.0) * (u > 0)
    layers.opacity += fluid * (0.55 + 0.35 * np.clip((chest.Y - top) / (0.15 * height), 0, 1))
    return _box_ellipse(fluid * layers.lungs)


def _pneumothorax(chest, layers, rng, spec, side):
    """A rim of air without lung markings along the apex and lateral wall, edged by the visceral pleura."""
    u, top, wall = lung_bounds(chest, side)
    rim = chest.half_width * _grade(spec, (0.05, 0.09, 0.14)) * rng.uniform(0.85, 1.15)
    depth = np.minimum((wall - u) * chest.half_width, chest.Y - top)
    lowest = chest.apex_y + chest.height(side) * _grade(spec, (0.35, 0.55, 0.8))
    reach = ramp((lowest - chest.Y) / 6.0) * (u > 0)
    space = ramp((rim - depth) / 1.5) * reach
    line = np.exp(-(((depth - rim) / 1.0) ** 2)) * reach
    layers.markings *= 1 - space
    layers.opacity += 0.35 * line - 0.25 * space
    return _box_ellipse(space * layers.lungs)


def _place_in_lung(chest, layers, rng, side, u_range, v_range) -> tuple[float, float]:
    """A point well inside the aerated lung of ``side`` (not behind the heart)."""
    for _ in range(50):
        x, y = chest.point(side, rng.uniform(*u_range), rng.uniform(*v_range))
        r, c = int(y), int(x)
        if 0 <= r < chest.rows and 0 <= c < chest.cols and layers.lungs[r, c] > 0.6:
            return x, y
    return x, y


def _zone_v(zone: str) -> tuple[float, float]:
    return {"upper": (0.18, 0.38), "mid": (0.38, 0.62), "lower": (0.62, 0.85)}[zone]


def _nodule(chest, layers, rng, spec, side):
    """A small round opacity, 2-3% of the image width across, a few percent brighter than the lung."""
    x, y = _place_in_lung(chest, layers, rng, side, (0.3, 0.8), _zone_v(spec.zone))
    radius = chest.cols * rng.uniform(*{"small": (0.01, 0.0125), "moderate": (0.0125, 0.015)}[spec.severity])
    r2 = ((chest.X - x) ** 2 + (chest.Y - y) ** 2) / radius**2
    layers.opacity += rng.uniform(0.15, 0.25) * np.sqrt(np.clip(1 - r2, 0, 1))
    return x, y, radius, radius


def _consolidation(chest, layers, rng, spec, side):
    """A patchy lobar opacity crossed by darker branching air bronchograms."""
    x, y = _place_in_lung(chest, layers, rng, side, (0.4, 0.65), _zone_v(spec.zone))
    scale = _grade(spec, (0.8, 1.0, 1.25))
    rx = chest.half_width * rng.uniform(0.14, 0.2) * scale
    ry = chest.height(side) * rng.uniform(0.08, 0.12) * scale
    patchiness = np.clip(0.55 + 0.45 * smooth_noise(rng, chest.rows, chest.cols, 6), 0, 1)
    patch = chest.ellipse(x, y, rx, ry, edge=5.0) * patchiness
    canvas = Image.new("L", (chest.cols, chest.rows), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(2, 5)):
        angle = rng.uniform(0, 2 * np.pi)
        x0, y0 = x + rng.normal(0, rx / 4), y + rng.normal(0, ry / 4)
        x1, y1 = x0 + np.cos(angle) * rx * 0.8, y0 + np.sin(angle) * ry * 0.8
        xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
        draw.line([(x0, y0), (xm, ym), (x1, y1)], fill=255, width=2)
        twig = (xm + np.cos(angle + 0.6) * rx * 0.3, ym + np.sin(angle + 0.6) * ry * 0.3)
        draw.line([(xm, ym), twig], fill=255, width=1)
    bronchi = blurred_mask(canvas, 0.7)
    layers.opacity += _grade(spec, (0.45, 0.6, 0.75)) * patch * (1 - 0.7 * bronchi)
    return x, y, rx, ry


def _atelectasis(chest, layers, rng, spec, side):
    """A thin plate-like band above the hemidiaphragm, rising slightly towards the chest wall."""
    u = rng.uniform(0.38, 0.68)
    x = chest.point(side, u, 0)[0]
    y = float(chest.diaphragm(side, np.float32(u))) - chest.height(side) * rng.uniform(0.07, 0.14)
    rx = chest.half_width * rng.uniform(0.13, 0.2)
    ry = chest.rows * rng.uniform(0.006, 0.01) * _grade(spec, (1.0, 1.3, 1.6))
    angle = -chest.sign(side) * rng.uniform(0.05, 0.2)
    layers.opacity += _grade(spec, (0.35, 0.45, 0.55)) * chest.ellipse(x, y, rx, ry, edge=1.0, angle=angle)
    return (x, y, *_tilted_extent(rx, ry, angle))


def _edema(chest, layers, rng, spec, side):
    """Perihilar haziness fading to the periphery (drawn per lung; the report calls it bilateral)."""
    hx, hy = chest.hilum(side)
    hx += chest.sign(side) * 0.08 * chest.half_width
    sx, sy = chest.half_width * rng.uniform(0.24, 0.3), chest.height(side) * rng.uniform(0.2, 0.26)
    haze = np.exp(-0.5 * (((chest.X - hx) / sx) ** 2 + ((chest.Y - hy) / sy) ** 2))
    texture = 0.75 + 0.25 * smooth_noise(rng, chest.rows, chest.cols, 3)
    layers.opacity += _grade(spec, (0.35, 0.5, 0.65)) * haze * texture
    return _box_ellipse(haze * layers.lungs * (chest.lateral(side) > 0), 0.35)


_DRAW = {"Cardiomegaly": _cardiomegaly, "Pleural Effusion": _effusion, "Pneumothorax": _pneumothorax,
         "Lung Lesion": _nodule, "Consolidation": _consolidation, "Atelectasis": _atelectasis,
         "Edema": _edema}
