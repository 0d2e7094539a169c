"""Frontal (PA/AP) and lateral chest radiograph phantoms, drawn with vectorised numpy.

Brightness is display intensity in [0, 1]: bone, heart and fluid bright, air dark. The frontal image is
kept as layers so that findings can act where a radiologist would look for them: replace lung air with
fluid or tissue (``opacity``), or remove the lung markings (pneumothorax). Sides are the patient's: the
patient's right lies on the image's left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIDES = ("right", "left")
AIR_DARKENING = 0.45  # how much darker aerated lung is than the soft tissue around it


def ramp(x: np.ndarray) -> np.ndarray:
    """Soft step from 0 to 1 over about four units of ``x``: anti-aliased edges, cheaper than tanh."""
    return np.clip(0.5 + 0.25 * x, 0.0, 1.0)


def smooth_noise(rng: np.random.Generator, rows: int, cols: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance random field with features about ``cell`` pixels wide (bicubic upsampling)."""
    coarse = rng.standard_normal((int(rows / cell) + 3, int(cols / cell) + 3)).astype(np.float32)
    field_ = np.asarray(Image.fromarray(coarse, "F").resize((cols, rows), Image.BICUBIC))
    return (field_ - field_.mean()) / (field_.std() + 1e-6)


@dataclass
class Chest:
    """Geometry of one frontal chest: everything findings, devices and gaze need to place themselves."""

    rows: int
    cols: int
    cx: float  # midline column
    half_width: float  # half the inner thoracic width, pixels
    apex_y: float  # row of the lung apices
    dome_y: dict[str, float]  # side -> row of the top of the diaphragm dome
    heart: tuple[float, float, float, float, float]  # x, y, rx, ry, angle of the cardiac silhouette
    Y: np.ndarray = field(repr=False)  # row coordinates, shape (rows, 1): broadcasting keeps 1-D work 1-D
    X: np.ndarray = field(repr=False)  # column coordinates, shape (1, cols)
    _per_side: dict = field(default_factory=dict, repr=False)  # lateral / floor arrays, computed once

    def sign(self, side: str) -> float:
        return -1.0 if side == "right" else 1.0

    def lateral(self, side: str) -> np.ndarray:
        """0 on the midline, 1 at the inner chest wall of ``side``."""
        if ("lateral", side) not in self._per_side:
            self._per_side["lateral", side] = self.sign(side) * (self.X - self.cx) / self.half_width
        return self._per_side["lateral", side]

    def floor(self, side: str) -> np.ndarray:
        """Row of the hemidiaphragm of ``side`` at every pixel's column."""
        if ("floor", side) not in self._per_side:
            self._per_side["floor", side] = self.diaphragm(side, self.lateral(side))
        return self._per_side["floor", side]

    def height(self, side: str) -> float:
        return self.dome_y[side] - self.apex_y

    def point(self, side: str, u: float, v: float) -> tuple[float, float]:
        """Pixel (x, y) at lateral fraction ``u`` and apex-to-dome fraction ``v`` of a lung."""
        return self.cx + self.sign(side) * u * self.half_width, self.apex_y + v * self.height(side)

    def hilum(self, side: str) -> tuple[float, float]:
        return self.point(side, 0.24, 0.42)

    def diaphragm(self, side: str, u: np.ndarray) -> np.ndarray:
        """Row of the hemidiaphragm at lateral fraction ``u``: deepest in the costophrenic recess."""
        lateral = np.clip(u - 0.38, 0, None) / 0.55
        medial = np.clip(0.38 - u, 0, None) / 0.38
        return self.dome_y[side] + self.rows * (0.075 * lateral**2 + 0.03 * medial**2)

    def heart_mask(self) -> np.ndarray:
        x, y, rx, ry, angle = self.heart
        return self.ellipse(x, y, rx, ry, edge=1.5, angle=angle)

    def ellipse(self, x: float, y: float, rx: float, ry: float, edge: float = 1.5, angle: float = 0.0
                ) -> np.ndarray:
        """Soft mask of an ellipse, ``angle`` radians clockwise on screen; computed only around it."""
        mask = np.zeros((self.rows, self.cols), dtype=np.float32)
        reach = max(rx, ry) * (1 + 2 * edge / min(rx, ry)) + 1  # where the soft edge has reached 0
        r0, r1 = max(int(y - reach), 0), min(int(y + reach) + 2, self.rows)
        c0, c1 = max(int(x - reach), 0), min(int(x + reach) + 2, self.cols)
        if r0 >= r1 or c0 >= c1:
            return mask
        dx, dy = self.X[:, c0:c1] - x, self.Y[r0:r1] - y
        if angle:
            dx, dy = dx * np.cos(angle) + dy * np.sin(angle), dy * np.cos(angle) - dx * np.sin(angle)
        r = np.sqrt((dx / rx) ** 2 + (dy / ry) ** 2)
        mask[r0:r1, c0:c1] = ramp((1.0 - r) * min(rx, ry) / edge)
        return mask


@dataclass
class Layers:
    tissue: np.ndarray  # soft tissue, mediastinum, abdomen
    bone: np.ndarray
    lungs: np.ndarray  # aerated lung field, 0..1
    markings: np.ndarray  # vessels inside the lungs
    opacity: np.ndarray  # 0..1 of lung air replaced by fluid or tissue (findings)
    overlay: np.ndarray  # radiopaque foreign bodies (devices, markers)


def sample_chest(rng: np.random.Generator, rows: int, cols: int, cardiothoracic_ratio: float) -> Chest:
    """Body size and position jitter; ``cardiothoracic_ratio`` sets the heart width (normal < 0.5)."""
    Y, X = (a.astype(np.float32) for a in np.ogrid[0:rows, 0:cols])
    cx = cols * (0.5 + rng.uniform(-0.035, 0.035))
    half_width = cols * rng.uniform(0.36, 0.43)
    apex_y = rows * rng.uniform(0.08, 0.15)
    dome = rows * rng.uniform(0.66, 0.74)
    dome_y = {"right": dome - rows * rng.uniform(0.0, 0.03), "left": dome}
    # A tilted ellipse whose lower third hides below the diaphragm; its width sets the cardiothoracic ratio.
    angle = rng.uniform(0.3, 0.45)
    ry = (dome - apex_y) * rng.uniform(0.2, 0.24) * (1 + 0.8 * max(cardiothoracic_ratio - 0.5, 0))
    half_extent = cardiothoracic_ratio * half_width  # horizontal half-width of the tilted ellipse
    rx = np.sqrt(max(half_extent**2 - (ry * np.sin(angle)) ** 2, 1.0)) / np.cos(angle)
    heart = (cx + 0.3 * cardiothoracic_ratio * half_width, dome - 0.45 * ry, rx, ry, angle)
    return Chest(rows, cols, cx, half_width, apex_y, dome_y, heart, Y, X)


def lung_bounds(chest: Chest, side: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lateral fraction u, apex row at each u, lateral-wall fraction at each row) of one lung."""
    u = chest.lateral(side)
    height = chest.height(side)
    top = chest.apex_y + height * 0.55 * ((u - 0.5) / 0.5) ** 2
    wall = 0.6 + 0.36 * np.sqrt(np.clip((chest.Y - chest.apex_y) / height + 0.03, 0, 1.2))
    return u, top, wall


def lung_field(chest: Chest, side: str, edge: float = 1.2) -> np.ndarray:
    """Soft mask of one lung: rounded apex, curved lateral wall, medial mediastinal border, domed base."""
    u, top, wall = lung_bounds(chest, side)
    medial = 0.1 + 0.06 * np.clip((chest.Y - chest.apex_y) / chest.height(side), 0, 1)
    w = chest.half_width
    return (
        ramp((chest.Y - top) / edge)
        * ramp((wall - u) * w / edge)
        * ramp((u - medial) * w / edge)
        * ramp((chest.floor(side) - chest.Y) / edge)
    )


def vessel_markings(chest: Chest, rng: np.random.Generator) -> np.ndarray:
    """Branching vessels fanning out of each hilum, thick and bright centrally, fading to the periphery."""
    canvas = Image.new("L", (chest.cols, chest.rows), 0)
    draw = ImageDraw.Draw(canvas)
    scale = chest.half_width
    for side in SIDES:
        hx, hy = chest.hilum(side)
        for angle in rng.uniform(-1.35, 1.45, size=rng.integers(12, 18)):
            _branch(draw, rng, hx, hy, chest.sign(side), angle, scale * rng.uniform(0.3, 0.6), 3.2, depth=2)
    return blurred_mask(canvas, 1.1)


def blurred_mask(canvas: Image.Image, radius: float) -> np.ndarray:
    """A drawn 8-bit canvas as a float mask in [0, 1], Gaussian-blurred only around what was drawn."""
    mask = np.zeros((canvas.height, canvas.width), dtype=np.float32)
    box = canvas.getbbox()
    if box is None:
        return mask
    margin = int(3 * radius) + 1
    x0, y0 = max(box[0] - margin, 0), max(box[1] - margin, 0)
    x1, y1 = min(box[2] + margin, canvas.width), min(box[3] + margin, canvas.height)
    crop = canvas.crop((x0, y0, x1, y1)).filter(ImageFilter.GaussianBlur(radius))
    mask[y0:y1, x0:x1] = np.asarray(crop, dtype=np.float32) / 255.0
    return mask


def _branch(draw, rng, x, y, sign, angle, length, width, depth):
    """One vessel: a slightly wavy segment that splits into thinner daughters."""
    points = [(x, y)]
    for _ in range(4):
        angle += rng.normal(0, 0.12)
        x += sign * np.cos(angle) * length / 4
        y += np.sin(angle) * length / 4
        points.append((x, y))
    draw.line(points, fill=int(150 + 30 * width), width=max(1, round(width)))
    if depth:
        for turn in (-0.35, 0.35):
            turned = angle + turn + rng.normal(0, 0.15)
            _branch(draw, rng, x, y, sign, turned, length * 0.6, width * 0.6, depth - 1)


def draw_frontal(chest: Chest, rng: np.random.Generator) -> Layers:
    """Soft tissue, mediastinum, heart, lungs with markings, ribs, clavicles, shoulders, diaphragm."""
    Y, X, H, W = chest.Y, chest.X, chest.rows, chest.cols
    hw, cx = chest.half_width, chest.cx
    dx = X - cx

    body_half = hw * rng.uniform(1.12, 1.22) * (1 - 0.05 * (Y / H))
    inside_body = ramp((body_half - np.abs(dx)) / 2.0)
    depth = np.sqrt(np.clip(1 - (dx / body_half) ** 2, 0, 1))
    tissue = 0.04 + 0.42 * inside_body * (0.5 + 0.5 * depth)

    # Mediastinum: narrow above the heart, with the air column of the trachea and the spine behind it.
    med_half = hw * (0.11 + 0.07 * np.clip((Y - chest.apex_y) / chest.height("left"), 0, 1))
    mediastinum = ramp((med_half - np.abs(dx + 0.02 * hw)) / 2.0)
    knob_x, knob_y = chest.point("left", 0.12, 0.28)  # aortic knob
    mediastinum = np.maximum(mediastinum, 0.8 * chest.ellipse(knob_x, knob_y, 0.07 * hw, 0.045 * H, edge=2.5))
    heart = chest.heart_mask()
    carina = chest.apex_y + 0.33 * chest.height("left")
    tissue -= 0.12 * ramp((0.045 * hw - np.abs(dx)) / 1.5) * ramp((carina - Y) / 3.0)
    spine = ramp((0.12 * hw - np.abs(dx)) / 2.0)
    vertebrae = 0.5 + 0.5 * np.cos(2 * np.pi * Y / (0.045 * H))
    bone = spine * (0.02 + 0.02 * vertebrae)

    lungs, abdomen, ribs = (np.zeros((H, W), dtype=np.float32) for _ in range(3))
    for side in SIDES:
        u = chest.lateral(side)
        floor = chest.floor(side)
        v = np.clip((Y - chest.apex_y) / chest.height(side), 0, 1)
        lungs = np.maximum(lungs, lung_field(chest, side) * (0.78 + 0.22 * v))
        abdomen = np.where(u >= 0, ramp((Y - floor) / 1.5), abdomen)
        ribs = np.maximum(ribs, _ribs(chest, side, u) * ramp((floor + 0.04 * H - Y) / 6.0))
        bone += 0.12 * _clavicle(chest, side, u)
        sx, sy = chest.point(side, 1.12, -0.1)
        bone += 0.14 * chest.ellipse(sx, sy, 0.14 * hw, 0.12 * H, edge=3.0)
    lungs *= (1 - heart) * (1 - mediastinum)
    tissue += 0.28 * inside_body * np.maximum(np.maximum(mediastinum, heart), abdomen)
    bx, by = chest.point("left", 0.5, 1.0)  # gastric bubble under the left hemidiaphragm
    bubble = chest.ellipse(bx, by + 0.07 * H, 0.13 * hw, 0.035 * H, edge=2.0) * (Y > by + 0.065 * H)
    tissue -= rng.uniform(0.04, 0.13) * bubble
    bone += 0.06 * ribs * (1 - 0.7 * np.maximum(mediastinum, heart))

    hilar = sum(chest.ellipse(*chest.hilum(s), 0.09 * hw, 0.06 * H, edge=6.0) for s in SIDES)
    markings = 0.6 * vessel_markings(chest, rng) + 0.3 * hilar + 0.08 * smooth_noise(rng, H, W, 3)
    return Layers(tissue, bone, lungs, markings, np.zeros((H, W), np.float32), np.zeros((H, W), np.float32))


def _ribs(chest: Chest, side: str, u: np.ndarray) -> np.ndarray:
    """Posterior ribs: arcs leaving the spine, rising slightly, then sweeping down along the lateral wall."""
    H = chest.rows
    spacing = chest.height(side) * 0.105
    rise = 0.04 * H * np.sin(np.pi * np.clip(u, 0, 1) * 0.7)
    arc = chest.apex_y - 0.05 * H - rise + 0.17 * H * np.clip(u, 0, 1.2) ** 2.5
    phase = (chest.Y - arc) / spacing * (1 - 0.02 * (chest.Y - chest.apex_y) / H)
    wave = np.cos(2 * np.pi * phase)
    band = ramp((wave - 0.35) / 0.12)
    cortex = (np.abs(wave - 0.35) < 0.1) * 0.5
    inside = ramp((u - 0.1) * 40) * ramp((1.08 - u) * 40) * ramp((phase + 0.1) * 8) * ramp((10.2 - phase) * 8)
    return (band + 0.4 * cortex) * inside


def _clavicle(chest: Chest, side: str, u: np.ndarray) -> np.ndarray:
    H = chest.rows
    along_u = np.clip(u, 0, 1)
    centre = chest.apex_y + 0.03 * H - 0.08 * H * along_u + 0.035 * H * np.sin(np.pi * along_u)
    thickness = 0.014 * H
    along = ramp((u - 0.1) * 40) * ramp((0.92 - u) * 30)
    return ramp((thickness - np.abs(chest.Y - centre)) / 1.2) * along


def compose(layers: Layers, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Flatten the layers into one image with quantum noise, mottle and a gentle exposure gradient."""
    rows, cols = layers.tissue.shape
    air = layers.lungs * (1 - np.clip(layers.opacity, -0.3, 1))
    image = layers.tissue + layers.bone - AIR_DARKENING * air + 0.2 * layers.markings * air + layers.overlay
    gradient = rng.uniform(-0.04, 0.04) * (np.arange(rows, dtype=np.float32)[:, None] / rows - 0.5)
    mottle = 0.012 * smooth_noise(rng, rows, cols, 14)
    image = image + gradient + mottle + noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def draw_lateral(rng: np.random.Generator, rows: int, cols: int, noise: float) -> np.ndarray:
    """A lateral view (patient facing the image's left): one lung field, heart in front, spine behind."""
    Y, X = (a.astype(np.float32) for a in np.ogrid[0:rows, 0:cols])
    cx, cy = cols * rng.uniform(0.48, 0.53), rows * rng.uniform(0.45, 0.5)

    def oval(x: float, y: float, rx: float, ry: float, sharpness: float) -> np.ndarray:
        return ramp((1 - np.sqrt(((X - x) / rx) ** 2 + ((Y - y) / ry) ** 2)) * sharpness)

    image = 0.05 + 0.5 * oval(cx, cy, 0.46 * cols, 0.75 * rows, 60)
    lung = oval(cx, cy - 0.03 * rows, 0.34 * cols, 0.36 * rows, 40)
    dome = rows * 0.76 + 0.05 * rows * ((X - cx) / (0.3 * cols)) ** 2
    lung *= ramp((dome - Y) / 1.5)
    heart = oval(cx - 0.14 * cols, 0.63 * rows, 0.17 * cols, 0.16 * rows, 20)
    lung *= 1 - 0.8 * heart
    spine_x = cx + 0.3 * cols + 0.03 * cols * np.sin(Y / rows * 3)
    spine = ramp((0.07 * cols - np.abs(X - spine_x)) / 1.5)
    vertebrae = ramp((np.cos(2 * np.pi * Y / (0.07 * rows)) + 0.6) / 0.15)
    sternum = ramp((0.012 * cols - np.abs(X - (cx - 0.37 * cols + 0.04 * cols * Y / rows))) / 1.0)
    humerus_x = cx + 0.05 * cols - 0.2 * (Y - 0.2 * rows)
    humeri = ramp((0.08 * cols - np.abs(X - humerus_x)) / 3) * ramp((0.45 * rows - Y) / 8)
    image += 0.16 * spine * vertebrae + 0.12 * sternum + 0.1 * humeri - AIR_DARKENING * lung
    image += 0.015 * lung * smooth_noise(rng, rows, cols, 6) + 0.012 * smooth_noise(rng, rows, cols, 14)
    image += noise * rng.standard_normal(image.shape)
    return np.clip(image, 0.0, 1.0).astype(np.float32)
