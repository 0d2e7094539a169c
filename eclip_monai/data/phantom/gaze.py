"""Radiologist-like scan paths and their EGD-CXR and REFLACX encodings.

A reading starts at the centre, sweeps both lungs, the heart and the costophrenic angles, and dwells (several
longer fixations) on each finding when the sweep reaches it, then glances back at the findings before
dictating. 20-60 fixations of 0.1-1.2 s joined by saccades. The encoders then corrupt a few overview
fixations the way real recordings are corrupted (invalid flag, off screen, off image, missing), so readers
must drop them and count what they dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eclip_monai.data.formats import EGD_SCREEN_SIZE, REFLACX_SCREEN_SIZE
from eclip_monai.data.phantom.anatomy import SIDES, Chest
from eclip_monai.data.phantom.findings import Finding

INVALID_RATE = 0.04


@dataclass(frozen=True)
class Reading:
    """Fixations in original-image pixels (x = column, y = row) and seconds from the image's display."""

    x: np.ndarray
    y: np.ndarray
    start: np.ndarray
    duration: np.ndarray
    on_finding: np.ndarray  # bool: part of a dwell on a finding (never corrupted by the encoders)

    def __len__(self) -> int:
        return len(self.x)


def _waypoints(chest: Chest, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Where a systematic search looks: lung zones top to bottom, hila, heart, costophrenic angles."""
    levels = [(0.55, 0.12), (0.5, 0.3), (0.5, 0.5), (0.55, 0.72), (0.85, 0.97)]
    if rng.random() < 0.5:  # one lung, then the other
        points = [chest.point(side, u, v) for side in SIDES for u, v in levels]
    else:  # compare the two sides level by level
        points = [chest.point(side, u, v) for u, v in levels for side in SIDES]
    points += [chest.hilum("right"), chest.hilum("left"), chest.heart[:2], (chest.cx, chest.apex_y)]
    return points


def read_image(rng: np.random.Generator, chest: Chest, findings: list[Finding]) -> Reading:
    """Simulate one reading of a frontal image whose anatomy is ``chest`` and drawn findings ``findings``."""
    rows, cols = chest.rows, chest.cols
    tracker_noise = 0.005 * cols
    dwell_counts = [int(rng.integers(3, 8)) for _ in findings]  # at most 6 findings (3 bilateral): <= 48
    overview_count = max(12, int(rng.integers(20, 61)) - sum(dwell_counts) - len(findings))
    waypoints = _waypoints(chest, rng)
    sweep = [(cols / 2, rows / 2)] + [waypoints[i % len(waypoints)] for i in range(overview_count - 1)]

    # Each finding is noticed when the sweep passes nearest to it; its dwell follows that fixation.
    near = [int(np.argmin([(px - f.x) ** 2 + (py - f.y) ** 2 for px, py in sweep])) for f in findings]
    xs, ys, dwell = [], [], []
    jitter = 0.04 * cols  # a sweep fixation lands near, not on, its waypoint
    for i, (px, py) in enumerate(sweep):
        xs.append(px + rng.normal(0, jitter))
        ys.append(py + rng.normal(0, jitter))
        dwell.append(False)
        for finding, count, at in zip(findings, dwell_counts, near):
            if at == i:
                _dwell(rng, finding, count, cols, xs, ys, dwell)
    for finding in findings:  # a last look at each finding before dictating
        _dwell(rng, finding, 1, cols, xs, ys, dwell)

    x = np.clip(np.array(xs) + rng.normal(0, tracker_noise, len(xs)), 0, cols - 1)
    y = np.clip(np.array(ys) + rng.normal(0, tracker_noise, len(ys)), 0, rows - 1)
    on_finding = np.array(dwell)
    duration = np.where(
        on_finding,
        np.clip(rng.lognormal(math.log(0.5), 0.4, len(x)), 0.15, 1.2),
        np.clip(rng.lognormal(math.log(0.22), 0.4, len(x)), 0.1, 0.6),
    )
    gaps = rng.uniform(0.02, 0.07, len(x))
    start = rng.uniform(0.3, 1.0) + np.concatenate([[0.0], np.cumsum(duration[:-1] + gaps[:-1])])
    return Reading(x, y, start, duration, on_finding)


def _dwell(rng, finding: Finding, count: int, cols: int, xs: list, ys: list, dwell: list) -> None:
    spread_x = 0.45 * max(finding.rx, 0.015 * cols)
    spread_y = 0.45 * max(finding.ry, 0.015 * cols)
    xs.extend(finding.x + rng.normal(0, spread_x, count))
    ys.extend(finding.y + rng.normal(0, spread_y, count))
    dwell.extend([True] * count)


def egd_padding(rows: int, cols: int) -> dict[str, int]:
    """Pads, in original pixels, that bring the image to the screen's aspect ratio (centred)."""
    width, height = EGD_SCREEN_SIZE
    pads = {"image_top_pad": 0, "image_bottom_pad": 0, "image_left_pad": 0, "image_right_pad": 0}
    if cols * height < rows * width:
        extra = round(rows * width / height) - cols
        pads["image_left_pad"], pads["image_right_pad"] = extra // 2, extra - extra // 2
    else:
        extra = round(cols * height / width) - rows
        pads["image_top_pad"], pads["image_bottom_pad"] = extra // 2, extra - extra // 2
    return pads


def _corrupt(rng: np.random.Generator, reading: Reading) -> np.ndarray:
    """Indices of overview fixations to corrupt: ~4% of the reading, at least one."""
    candidates = np.flatnonzero(~reading.on_finding)
    count = min(len(candidates), max(1, int(rng.binomial(len(reading), INVALID_RATE))))
    return rng.choice(candidates, size=count, replace=False)


def egd_fixations(rng: np.random.Generator, reading: Reading, dicom_id: str, rows: int, cols: int,
                  first_count: int = 1) -> list[dict]:
    """Gazepoint rows: FPOG as fractions of the padded image shown full screen, X/Y_ORIGINAL in pixels."""
    pads = egd_padding(rows, cols)
    left, top = pads["image_left_pad"], pads["image_top_pad"]
    padded_w, padded_h = cols + left + pads["image_right_pad"], rows + top + pads["image_bottom_pad"]
    fx = (reading.x + left) / padded_w
    fy = (reading.y + top) / padded_h
    valid = np.ones(len(reading), dtype=int)
    for i in _corrupt(rng, reading):
        kind = rng.integers(4)
        if kind == 0:  # tracker lost the eye
            valid[i] = 0
        elif kind == 1:  # off the screen
            fx[i] = 1 + rng.uniform(0.01, 0.08) if fx[i] > 0.5 else -rng.uniform(0.01, 0.08)
        elif kind == 2:  # on the screen, in the padding beside the image
            fx[i] = rng.uniform(0.0, left / padded_w) if left else fx[i]
            fy[i] = fy[i] if left else rng.uniform(0.0, top / padded_h)
        else:  # missing sample
            fx[i] = fy[i] = np.nan
    fx, fy = np.round(fx, 5), np.round(fy, 5)
    screen_w, screen_h = EGD_SCREEN_SIZE
    pupil = rng.uniform(3.3, 4.5)
    rows_out = []
    prev = (0.5, 0.5)
    for i in range(len(reading)):
        start, duration = float(reading.start[i]), float(reading.duration[i])
        finite = not (math.isnan(fx[i]) or math.isnan(fy[i]))
        dx, dy = ((fx[i] - prev[0]) * screen_w, (fy[i] - prev[1]) * screen_h) if finite else (0.0, 0.0)
        prev = (fx[i], fy[i]) if finite else prev
        rows_out.append({
            "DICOM_ID": dicom_id, "CNT": first_count + i, "TIME (in secs)": round(start + duration, 5),
            "FPOGX": fx[i], "FPOGY": fy[i], "FPOGS": round(start, 5), "FPOGD": round(duration, 5),
            "FPOGID": i + 1, "FPOGV": int(valid[i]),
            "BPOGX": round(fx[i] + rng.normal(0, 0.002), 5), "BPOGY": round(fy[i] + rng.normal(0, 0.002), 5),
            "BPOGV": int(valid[i]), "CX": 0.5, "CY": 0.5, "CS": 0, "KB": 0, "KBS": 0, "USER": 0,
            "LPCX": round(0.42 + rng.normal(0, 0.005), 5), "LPCY": round(0.55 + rng.normal(0, 0.005), 5),
            "LPD": round(26 + rng.normal(0, 1), 3), "LPS": round(1 + rng.normal(0, 0.01), 5), "LPV": 1,
            "RPCX": round(0.58 + rng.normal(0, 0.005), 5), "RPCY": round(0.55 + rng.normal(0, 0.005), 5),
            "RPD": round(26 + rng.normal(0, 1), 3), "RPS": round(1 + rng.normal(0, 0.01), 5), "RPV": 1,
            "BKID": 0, "BKDUR": 0.0, "BKPMIN": int(rng.integers(10, 20)),
            "LPMM": round(pupil + rng.normal(0, 0.05), 4), "LPMMV": 1,
            "RPMM": round(pupil + rng.normal(0, 0.05), 4), "RPMMV": 1,
            "SACCADE_MAG": round(math.hypot(dx, dy), 3),
            "SACCADE_DIR": round(math.degrees(math.atan2(dy, dx)) % 360, 3),
            "X_ORIGINAL": round(fx[i] * padded_w - left) if finite else None,
            "Y_ORIGINAL": round(fy[i] * padded_h - top) if finite else None,
        })
    return rows_out


def reflacx_fixations(rng: np.random.Generator, reading: Reading, rows: int, cols: int,
                      window: tuple[float, float]) -> list[dict]:
    """REFLACX rows: positions in image pixels, the whole image shown centred on a 3840x2160 screen."""
    x, y = reading.x.copy(), reading.y.copy()
    for i in _corrupt(rng, reading):
        if rng.random() < 0.6:  # looked beside the image
            offset = rng.uniform(0.02, 0.1) * cols
            x[i] = cols + offset if x[i] > cols / 2 else -offset
        else:
            x[i] = y[i] = np.nan
    per_degree = round(cols * rng.uniform(0.02, 0.03), 4)  # 1 degree of visual angle = 2-3% of the width
    screen_w, screen_h = REFLACX_SCREEN_SIZE
    scale = min(screen_w / cols, screen_h / rows)
    x0, y0 = round((screen_w - cols * scale) / 2), round((screen_h - rows * scale) / 2)
    width, level = window
    return [{
        "timestamp_start_fixation": round(float(reading.start[i]), 4),
        "timestamp_end_fixation": round(float(reading.start[i] + reading.duration[i]), 4),
        "x_position": round(float(x[i]), 2), "y_position": round(float(y[i]), 2),
        "pupil_area_normalized": round(float(rng.uniform(0.3, 0.6)), 5),
        "angular_resolution_x_pixels_per_degree": per_degree,
        "angular_resolution_y_pixels_per_degree": per_degree,
        "window_width": width, "window_level": level,
        "xmin_shown_from_image": 0, "ymin_shown_from_image": 0,
        "xmax_shown_from_image": cols, "ymax_shown_from_image": rows,
        "xmin_in_screen_coordinates": x0, "ymin_in_screen_coordinates": y0,
        "xmax_in_screen_coordinates": screen_w - x0, "ymax_in_screen_coordinates": screen_h - y0,
    } for i in range(len(reading))]
