"""Shared dataset helpers: stratified splits and subsets, the subset wrapper, image checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _quotas(counts: np.ndarray, total: int) -> np.ndarray:
    """Split `total` over classes in proportion to `counts` (largest remainder: sums exactly)."""
    exact = counts * (total / counts.sum())
    q = np.floor(exact).astype(int)
    order = np.argsort(-(exact - q), kind="stable")
    q[order[: total - q.sum()]] += 1
    return q


def stratified_split(labels, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint index sets with the given fractions, e.g. {"val": .1, "test": .2}; the rest goes
    to "train". Each part is round(N * fraction) items spread over the classes in proportion
    (largest remainder, so small classes still reach val/test). Deterministic; indices sorted."""
    labels = np.asarray(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = {k: _quotas(counts, int(round(len(labels) * f))) for k, f in fractions.items()}
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("train", *fractions)}
    for c in range(len(classes)):
        idx = np.flatnonzero(inverse == c)
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for name in fractions:
            out[name].append(idx[start : start + quotas[name][c]])
            start += quotas[name][c]
        out["train"].append(idx[start:])
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def stratified_indices(labels, fraction: float, seed: int = 0) -> np.ndarray:
    """A deterministic, class-stratified `fraction` of the indices (sorted).

    Class quotas come from the largest-remainder rule so the total is round(N * fraction) (at
    least 1); each class keeps a prefix of its own seeded permutation, so with one seed a smaller
    fraction picks (nearly always) a subset of a larger one — handy for data-efficiency curves.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(len(labels))
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quotas = _quotas(counts, max(1, int(round(len(labels) * fraction))))
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(len(classes)):
        idx = np.flatnonzero(inverse == c)
        keep.append(idx[rng.permutation(len(idx))[: quotas[c]]])
    return np.sort(np.concatenate(keep))


class SubsetDataset(Dataset):
    """Items `indices` of `base`; attributes (num_classes, class_names, ...) pass through."""

    def __init__(self, base, indices):
        self.base = base
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.base[self.indices[i]]

    def __getitems__(self, indices: list[int]) -> list:
        """A batch at once when `base` fetches batches itself (see ShapesDataset)."""
        if hasattr(self.base, "__getitems__"):
            return self.base.__getitems__([self.indices[i] for i in indices])
        return [self[i] for i in indices]

    @property
    def labels(self) -> list[int]:
        labels = self.base.labels
        return [labels[i] for i in self.indices]

    def __getattr__(self, name):
        if name in ("base", "indices") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def __repr__(self) -> str:
        return f"SubsetDataset({len(self.indices)} of {self.base!r})"


def verify_image(path: Path) -> str | None:
    """None if `path` decodes as an image, else the reason it does not."""
    try:
        with Image.open(path) as im:
            im.verify()  # checks structure (PNG checksums) without decoding every pixel
        return None
    except FileNotFoundError:
        return "file not found"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        return f"not a readable image ({type(e).__name__}: {e})"


def load_rgb(path, mode: str = "RGB") -> Image.Image:
    """Open an image as `mode`; a broken file raises ValueError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert(mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
