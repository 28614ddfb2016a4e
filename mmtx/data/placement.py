"""Placing a scene's objects: centres that keep every object inside the image and apart, the
pairs some tasks need far apart or at a set distance, and how objects that do not fit shrink."""

from __future__ import annotations

import numpy as np

# Placing objects that do not fit: new positions, then (every _SHRINK_EVERY failed tries) 10%
# smaller, but not below their size's range for the first _KEEP_SIZES tries: a "large" object
# shrunk below a "small" one would make its caption wrong (14% of the large objects in caption
# scenes were, when every failure shrank). Only a scene that fits no other way (many objects,
# a tiny image) shrinks further.
PLACE_TRIES, _SHRINK_EVERY, _KEEP_SIZES = 40, 4, 24
# Caption scenes keep |larger offset| >= CLEAR * |smaller offset| between related objects, so
# "left of" is never a near-diagonal call that "above" would describe as well.
CLEAR = 2.0


def shrink(radii: np.ndarray, floor: np.ndarray, attempt: int) -> np.ndarray:
    """The radii for the try after failed try `attempt` (see PLACE_TRIES)."""
    if attempt % _SHRINK_EVERY != _SHRINK_EVERY - 1:
        return radii  # new positions first
    if attempt >= _KEEP_SIZES:
        floor = np.zeros_like(floor)
    return np.maximum(radii * 0.9, np.minimum(radii, floor))


def place(rng, radii, side, far, clear=False, pos=None, start=0):
    """Centres keeping the bounding circles (radii) inside the image, 1.5 px apart, and
    objects 0 and 1 at least `far` apart; with `clear`, each object the caption places
    (1 against 0, later ones against 1) lies clearly to one side; None if they do not fit.
    With `pos`, its first `start` centres are already placed and kept."""
    pos = np.zeros((len(radii), 2)) if pos is None else pos
    for i in range(start, len(radii)):
        r = radii[i]
        cand = rng.uniform(r + 0.5, side - r - 0.5, (32, 2))  # 32 tries at once
        ok = np.ones(len(cand), dtype=bool)
        for j in range(i):
            need = max(r + radii[j] + 1.5, far if i == 1 else 0.0)
            ok &= np.hypot(*(cand - pos[j]).T) >= need
        if clear and i >= 1:
            off = np.abs(cand - pos[0 if i == 1 else 1])  # (32, 2)
            ok &= off.max(axis=1) >= CLEAR * off.min(axis=1)
        if not ok.any():
            return None
        pos[i] = cand[int(ok.argmax())]  # the first candidate that fits
    return pos


def place_at_distance(rng, radii, side, distance):
    """Centres as `place`, with objects 0 and 1 at a distance within `distance` (lo, hi): object 1
    is put at a drawn distance and angle from object 0 (many pairs tried at once); None if
    no pair fits."""
    pos = np.zeros((len(radii), 2))
    lo, hi = distance[0] * side, distance[1] * side
    r0, r1 = radii[0], radii[1]
    for _ in range(16):  # 16 x 64 pairs
        p0 = rng.uniform(r0 + 0.5, side - r0 - 0.5, (64, 2))
        d = rng.uniform(lo, hi, 64)
        angle = rng.uniform(0.0, 2 * np.pi, 64)
        p1 = p0 + d[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)  # (64, 2)
        ok = (d >= r0 + r1 + 1.5) & np.all((p1 >= r1 + 0.5) & (p1 <= side - r1 - 0.5), 1)
        if ok.any():
            k = int(ok.argmax())
            pos[0], pos[1] = p0[k], p1[k]
            break
    else:
        return None
    return place(rng, radii, side, 0.0, pos=pos, start=2)  # distractors: anywhere clear
