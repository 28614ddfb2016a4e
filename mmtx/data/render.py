"""Anti-aliased shape rendering with numpy signed distance functions.

Every shape is a signed distance function (SDF) of pixel-centre offsets from the object centre:
negative inside, positive outside, in pixels. Coverage is `clip(0.5 - sdf, 0, 1)`, a one-pixel
ramp that anti-aliases edges for the price of one subtraction, so a 32 px scene costs a few
dozen small numpy operations (well over 2,000 images/s on one core; see benchmarks/data.py).
Only the object's bounding box is evaluated, which keeps larger images cheap too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")

# Bright, well separated colours on a dark background; names are what captions say.
COLOURS = {
    "red": (0.92, 0.12, 0.12),
    "orange": (1.00, 0.56, 0.05),
    "yellow": (0.96, 0.90, 0.12),
    "green": (0.12, 0.76, 0.22),
    "cyan": (0.10, 0.85, 0.92),
    "blue": (0.18, 0.38, 1.00),
    "purple": (0.62, 0.25, 0.92),
    "white": (0.95, 0.95, 0.95),
}

# Distance from the centre to the farthest point of each shape, in units of r: placement keeps
# these bounding circles apart and inside the image.
BOUND = {"circle": 1.0, "square": 0.8 * math.sqrt(2), "triangle": 1.26, "diamond": 1.05,
         "star": 1.1, "cross": 0.96}
_SQRT_HALF = math.sqrt(0.5)
_STAR_SECTOR = 2 * math.pi / 5
_STAR_INNER = 0.45  # inner / outer radius: fat enough arms to read at 5 px


@dataclass
class Obj:
    """One drawn object: centre (x, y) and radius r in pixels, colour as RGB in [0, 1]."""

    shape: str
    colour: str
    size: str  # "small" | "large"
    x: float
    y: float
    r: float
    rgb: tuple[float, float, float]


def _star_sdf(dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    # Fold the plane into one half-sector [0, 36 deg] around an upward tip; there the star is
    # the triangle (origin, tip, inner vertex) and the SDF is the distance to the tip-inner edge.
    theta = np.arctan2(dx, -dy)  # 0 at the top tip, clockwise
    theta = np.abs(np.mod(theta + _STAR_SECTOR / 2, _STAR_SECTOR) - _STAR_SECTOR / 2)
    rho = np.hypot(dx, dy)
    px, py = rho * np.cos(theta), rho * np.sin(theta)
    ax, ay = r, 0.0  # tip
    half = _STAR_SECTOR / 2
    bx, by = r * _STAR_INNER * math.cos(half), r * _STAR_INNER * math.sin(half)  # inner vertex
    ex, ey = bx - ax, by - ay
    norm = math.hypot(ex, ey)
    nx, ny = ey / norm, -ex / norm  # edge normal pointing away from the origin
    if nx * (0 - ax) + ny * (0 - ay) > 0:
        nx, ny = -nx, -ny
    return (px - ax) * nx + (py - ay) * ny


def shape_sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels) of offsets (dx, dy) to `shape` of radius r; y points down."""
    if shape == "circle":
        return np.hypot(dx, dy) - r
    if shape == "square":  # half side 0.8 r: about the area of the circle
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.8 * r
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - 1.05 * r) * _SQRT_HALF
    if shape == "triangle":  # equilateral, apex up, shifted down so its bounding box is centred
        dy = dy - 0.27 * r
        return np.maximum(dy, 0.866 * np.abs(dx) - 0.5 * dy) - 0.55 * r
    if shape == "star":
        return _star_sdf(dx, dy, 1.1 * r)
    if shape == "cross":
        ax, ay, arm = np.abs(dx), np.abs(dy), 0.9 * r
        bar = 0.32 * r
        return np.minimum(np.maximum(ax - arm, ay - bar), np.maximum(ax - bar, ay - arm))
    raise ValueError(f"shape: expected one of {', '.join(SHAPES)}, got {shape!r}")


def _coverage(o: Obj, size: int):
    """(y0, y1, x0, x1, sdf) over the object's bounding box, or None when it misses the image.

    The box has a one-pixel margin for the anti-aliasing ramp; sdf is (h, w) in pixels.
    """
    b = BOUND[o.shape] * o.r
    x0, x1 = max(0, int(o.x - b - 1)), min(size, int(o.x + b + 2))
    y0, y1 = max(0, int(o.y - b - 1)), min(size, int(o.y + b + 2))
    if x0 >= x1 or y0 >= y1:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - o.x)[None, :]  # (1, w)
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - o.y)[:, None]  # (h, 1)
    return y0, y1, x0, x1, shape_sdf(o.shape, dx, dy, o.r)


def render(objects: list[Obj], image_size: int, background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """Draw objects in order onto a background; returns float32 (H, W, 3) in [0, 1]."""
    size = image_size
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = background
    for o in objects:
        cov = _coverage(o, size)
        if cov is None:
            continue
        y0, y1, x0, x1, sdf = cov
        alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]  # (h, w, 1)
        region = img[y0:y1, x0:x1]
        region += alpha * (np.asarray(o.rgb, dtype=np.float32) - region)
    return img


def object_masks(objects: list[Obj], image_size: int) -> np.ndarray:
    """Which pixels show each object: bool (n, H, W).

    A pixel belongs to an object when its centre lies inside the shape (coverage > 0.5, so the
    pixel is more than half the object's colour); a later object hides an earlier one where
    they overlap, as in render(). Clutter and noise drawn afterwards are not subtracted.
    """
    size = image_size
    masks = np.zeros((len(objects), size, size), dtype=bool)
    for i, o in enumerate(objects):
        cov = _coverage(o, size)
        if cov is None:
            continue
        y0, y1, x0, x1, sdf = cov
        inside = sdf < 0  # (h, w): 0.5 - sdf > 0.5
        masks[:i, y0:y1, x0:x1] &= ~inside
        masks[i, y0:y1, x0:x1] = inside
    return masks


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight (x0, y0, x1, y1) pixel-edge boxes of (n, H, W) bool masks: float32 (n, 4).

    x1 and y1 are exclusive (a one-pixel mask at column c spans c..c+1); an empty mask gets
    the all-zero box.
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, m in enumerate(masks):
        cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
        if len(cols):
            boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes


def add_clutter(img: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Grey one-pixel specks and short strokes, dimmer than any object colour (in place)."""
    size = img.shape[0]
    for _ in range(count):
        x, y = rng.integers(0, size, 2)
        length = int(rng.integers(1, 4))
        level = float(rng.uniform(0.2, 0.4))
        if rng.random() < 0.5:
            img[y, x : x + length] = level
        else:
            img[y : y + length, x] = level
