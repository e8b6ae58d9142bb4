"""Digits written with a pen by code: a positive kind of the wild study that no font and no MNIST image draws.

Each digit is one or more strokes through a few control points on a unit box (x right, y down), in the shapes
people write (a 1 with or without its flag and foot, an open or closed 4, a 7 with or without its bar, ...).
A sheet moves every point by a little hand tremor, slants and rotates the whole, then runs a round nib along
a smooth curve through the points, its width swelling and thinning with pressure. Nothing here is learned
or fitted; the only link to MNIST is that a digit's label says which shapes to draw.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, n: int = 9) -> Stroke:
    """Points on an ellipse from angle `start` to `end` in degrees (0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, end, n))
    return [(cx + rx * float(np.cos(a)), cy + ry * float(np.sin(a))) for a in t]


# digit -> its ways of being written, each a list of strokes (the order a pen would draw them)
SHAPES: dict[int, list[list[Stroke]]] = {
    0: [[arc(0.5, 0.5, 0.36, 0.42, -90, 275, 13)], [arc(0.5, 0.5, 0.32, 0.42, -100, 250, 13)]],
    1: [[[(0.52, 0.08), (0.5, 0.5), (0.48, 0.92)]],
        [[(0.3, 0.28), (0.52, 0.08), (0.52, 0.92)], [(0.32, 0.92), (0.72, 0.92)]]],
    2: [[arc(0.5, 0.32, 0.28, 0.24, 190, 360, 6) + [(0.62, 0.6), (0.2, 0.92), (0.82, 0.9)]],
        [arc(0.5, 0.3, 0.28, 0.22, 200, 370, 6) + [(0.45, 0.75), (0.22, 0.9), (0.35, 0.82), (0.85, 0.92)]]],
    3: [[arc(0.48, 0.3, 0.26, 0.2, 210, 450, 8)[:-1] + arc(0.48, 0.7, 0.3, 0.22, -90, 150, 8)],
        [[(0.2, 0.1), (0.78, 0.1), (0.45, 0.42)] + arc(0.48, 0.68, 0.3, 0.24, -80, 150, 8)]],
    4: [[[(0.6, 0.08), (0.18, 0.66), (0.86, 0.66)], [(0.66, 0.36), (0.66, 0.94)]],
        [[(0.35, 0.08), (0.2, 0.58), (0.82, 0.58)], [(0.68, 0.1), (0.66, 0.92)]]],
    5: [[[(0.78, 0.1), (0.3, 0.1), (0.26, 0.46)] + arc(0.5, 0.66, 0.3, 0.24, -120, 150, 8)],
        [[(0.3, 0.1), (0.25, 0.46)] + arc(0.5, 0.66, 0.3, 0.24, -120, 150, 8), [(0.3, 0.1), (0.8, 0.12)]]],
    6: [[[(0.68, 0.08), (0.42, 0.3), (0.24, 0.64)] + arc(0.5, 0.7, 0.26, 0.22, 180, 530, 12)],
        [[(0.72, 0.12), (0.4, 0.2), (0.24, 0.6)] + arc(0.48, 0.68, 0.25, 0.24, 170, 520, 12)]],
    7: [[[(0.18, 0.1), (0.82, 0.1), (0.42, 0.92)]],
        [[(0.18, 0.14), (0.82, 0.1), (0.5, 0.5), (0.4, 0.92)], [(0.38, 0.52), (0.72, 0.5)]]],
    8: [[arc(0.5, 0.28, 0.22, 0.19, 0, -360, 12)[:-1] + arc(0.5, 0.7, 0.27, 0.22, -90, 270, 14)],
        [arc(0.5, 0.3, 0.2, 0.2, 90, 450, 12), arc(0.5, 0.7, 0.27, 0.21, -90, 270, 14)]],
    9: [[arc(0.48, 0.3, 0.26, 0.21, 0, -360, 12) + [(0.72, 0.6), (0.66, 0.92)]],
        [arc(0.46, 0.3, 0.25, 0.21, 10, -350, 12) + [(0.7, 0.6), (0.6, 0.8), (0.42, 0.92)]]],
}


def smooth(points: np.ndarray, per_segment: int = 12) -> np.ndarray:
    """A Catmull-Rom curve through the points (ends repeated so it starts and stops on them)."""
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        a, b, c, d = p[i - 1], p[i], p[i + 1], p[i + 2]
        cubic = (2 * a - 5 * b + 4 * c - d) * t ** 2 + (3 * b - a - 3 * c + d) * t ** 3
        out.append(0.5 * (2 * b + (c - a) * t + cubic))
    return np.concatenate([*out, points[-1:]])


def pen_ink(label: int, side: int, rng: np.random.Generator, nib: tuple[float, float] = (0.04, 0.11)) -> np.ndarray:
    """Ink (1) on nothing (0), float32 [side, side]: the digit `label` written by a hand drawn at random
    (shape, tremor, slant, rotation, size, place, pressure, and a nib width drawn from `nib`, as fractions
    of the digit's height)."""
    strokes = SHAPES[label][int(rng.integers(len(SHAPES[label])))]
    slant, angle = float(rng.uniform(-0.3, 0.15)), np.radians(float(rng.uniform(-10, 10)))
    aspect, height = float(rng.uniform(0.75, 1.1)), float(rng.uniform(0.6, 0.78)) * side
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = side / 2 + rng.uniform(-0.06, 0.06, 2) * side
    nib_px = float(rng.uniform(*nib)) * height
    scale = 4  # drawn at 4x and shrunk: anti-aliased edges, as a scan of ink has
    im = Image.new("L", (side * scale, side * scale), 0)
    draw = ImageDraw.Draw(im)
    for stroke in strokes:
        shake = rng.normal(0, 0.02, (len(stroke) + 2, 2))
        pts = np.array(stroke, dtype=np.float64) + (shake[:-2] + 2 * shake[1:-1] + shake[2:]) / 4  # slow tremor
        pts = (pts - 0.5) * [aspect * 0.62, 1.0]
        pts[:, 0] -= slant * pts[:, 1]  # slant > 0 leans the top to the right (forward), < 0 back
        xy = (smooth(pts) @ rot.T) * height + centre
        steps = np.maximum(np.hypot(*np.diff(xy, axis=0).T), 1e-9)
        length = np.concatenate([[0.0], np.cumsum(steps)])
        dense = np.stack([np.interp(np.arange(0, length[-1], 0.25), length, xy[:, k]) for k in (0, 1)], 1)
        phase = rng.uniform(0, 2 * np.pi)
        pressure = 1 + 0.25 * np.sin(phase + np.linspace(0, rng.uniform(2, 6), len(dense)))
        for (x, y), w in zip(dense * scale, pressure * nib_px * scale / 2, strict=True):
            draw.ellipse((x - w, y - w, x + w, y + w), fill=255)
    small = im.resize((side, side), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def pen_sheet(label: int, side: int, rng: np.random.Generator, nib: tuple[float, float] = (0.04, 0.11)) -> Image.Image:
    """The digit written in dark ink (10-80) on light paper (215-255), as a scan would save it."""
    ink = pen_ink(label, side, rng, nib)
    paper, dark = float(rng.uniform(215, 255)), float(rng.uniform(10, 80))
    return Image.fromarray(np.uint8(np.rint(paper * (1 - ink) + dark * ink)), mode="L")
