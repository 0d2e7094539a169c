"""Radiopaque distractors: side markers, ECG leads, tubes, lines and pacemakers.

They are bright, sharp and often larger than the findings, so a model that attends to whatever stands out
learns nothing about disease. Only tubes, lines and pacemakers are reported (CheXpert "Support Devices");
markers and ECG leads carry no label, as in real reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from eclip_monai.data.phantom.anatomy import Chest, Layers, blurred_mask

SUPPORT_DEVICES = ("endotracheal tube", "central venous catheter", "pacemaker", "enteric tube")
_RATES = {  # probability per view; AP films are the portable, sicker patients
    "PA": {"side marker": 0.85, "ECG leads": 0.25, "endotracheal tube": 0.02, "central venous catheter": 0.06,
           "pacemaker": 0.05, "enteric tube": 0.02},
    "AP": {"side marker": 0.8, "ECG leads": 0.6, "endotracheal tube": 0.2, "central venous catheter": 0.25,
           "pacemaker": 0.08, "enteric tube": 0.18},
}


@dataclass(frozen=True)
class Device:
    name: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels

    @property
    def labelled(self) -> bool:
        return self.name in SUPPORT_DEVICES

    def as_truth(self) -> dict:
        return {"name": self.name, "box": list(self.box)}


def sample_devices(rng: np.random.Generator, view: str) -> list[str]:
    return [name for name, rate in _RATES[view].items() if rng.random() < rate]


def draw_devices(chest: Chest, layers: Layers, rng: np.random.Generator, names: list[str]) -> list[Device]:
    """Draw ``names`` into ``layers.overlay`` (in place) and return each device with its bounding box."""
    devices = []
    for name in names:
        canvas = Image.new("L", (chest.cols, chest.rows), 0)
        brightness = _DRAW[name](ImageDraw.Draw(canvas), chest, rng)
        mask = blurred_mask(canvas, 0.6)
        layers.overlay += brightness * mask
        rows, cols = np.nonzero(mask > 0.2)
        if rows.size:
            box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
            devices.append(Device(name, box))
    return devices


def _side_marker(draw, chest, rng):
    """A lead letter in a corner: "L" on the image right (patient's left) or "R" on the image left."""
    letter = str(rng.choice(["L", "R"]))
    size = max(10, int(chest.rows * rng.uniform(0.04, 0.06)))
    x = chest.cols * (rng.uniform(0.78, 0.9) if letter == "L" else rng.uniform(0.04, 0.14))
    y = chest.rows * rng.uniform(0.02, 0.08)
    draw.rectangle([x - 2, y - 2, x + size * 0.8, y + size * 1.1], outline=160, width=1)
    draw.text((x, y), letter, fill=255, font=ImageFont.load_default(size=size))
    return 0.6


def _ecg_leads(draw, chest, rng):
    """Two to four snap electrodes on the chest wall with wires running off the film."""
    radius = chest.cols * rng.uniform(0.012, 0.018)
    for _ in range(rng.integers(2, 5)):
        side = str(rng.choice(["right", "left"]))
        x, y = chest.point(side, rng.uniform(0.5, 1.1), rng.uniform(-0.1, 0.5))
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=200, width=2)
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=255)
        edge_x = 0 if x < chest.cx else chest.cols
        bend = (x + edge_x) / 2, y + rng.uniform(-0.1, 0.1) * chest.rows
        draw.line([(x, y), bend, (edge_x, y + rng.uniform(-0.2, 0.2) * chest.rows)], fill=110, width=1)
    return 0.35


def _endotracheal_tube(draw, chest, rng):
    """Down the trachea from the top of the film, tip a few centimetres above the carina."""
    carina = chest.apex_y + 0.33 * chest.height("left")
    tip = carina - chest.rows * rng.uniform(0.04, 0.09)
    x = chest.cx + rng.uniform(-0.01, 0.01) * chest.cols
    draw.line([(x - 3, 0), (x - 3, tip)], fill=90, width=1)
    draw.line([(x + 3, 0), (x + 3, tip)], fill=90, width=1)
    draw.line([(x, 0), (x, tip)], fill=255, width=1)
    return 0.3


def _central_line(draw, chest, rng):
    """Right internal jugular catheter curving into the superior vena cava."""
    start = (chest.cx - chest.half_width * rng.uniform(0.25, 0.4), 0)
    bend = (chest.cx - chest.half_width * 0.16, chest.apex_y)
    tip = (chest.cx - chest.half_width * 0.06, chest.apex_y + chest.height("right") * rng.uniform(0.3, 0.45))
    draw.line([start, bend, tip], fill=255, width=2, joint="curve")
    return 0.3


def _pacemaker(draw, chest, rng):
    """Generator below the left clavicle with leads into the right atrium and ventricle."""
    gx, gy = chest.point("left", rng.uniform(0.55, 0.75), rng.uniform(0.0, 0.12))
    w, h = chest.cols * 0.06, chest.rows * 0.035
    draw.rounded_rectangle([gx - w, gy - h, gx + w, gy + h], radius=int(h * 0.6), fill=255)
    hx, hy, _, ry, _ = chest.heart
    for dy in (-0.4, 0.3):
        draw.line([(gx - w, gy), (chest.cx, chest.apex_y + 0.1 * chest.rows), (hx - 0.3 * ry, hy + dy * ry)],
                  fill=230, width=2, joint="curve")
    return 0.55


def _enteric_tube(draw, chest, rng):
    """Down the oesophagus, past the diaphragm, coiling in the stomach."""
    x = chest.cx + chest.half_width * rng.uniform(0.0, 0.05)
    bx, by = chest.point("left", 0.45, 1.0)
    stomach = (bx, by + 0.08 * chest.rows)
    points = [(x, 0), (x, chest.dome_y["left"]), stomach, (bx + 0.05 * chest.cols, by + 0.12 * chest.rows)]
    draw.line(points, fill=220, width=2, joint="curve")
    return 0.3


_DRAW = {"side marker": _side_marker, "ECG leads": _ecg_leads, "endotracheal tube": _endotracheal_tube,
         "central venous catheter": _central_line, "pacemaker": _pacemaker, "enteric tube": _enteric_tube}
