"""Shared dataset helpers: stratified splits and subsets, the subset wrapper, image checks."""

from __future__ import annotations

import logging
import os
import stat
import warnings
from contextlib import contextmanager
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
    (largest remainder, so small classes still reach val/test). Deterministic; indices sorted;
    every index in exactly one part (checked: a leak between splits is never silent)."""
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
    parts = {k: np.sort(np.concatenate(v)) for k, v in out.items()}
    every = np.concatenate(list(parts.values()))
    if len(every) != len(labels) or len(np.unique(every)) != len(labels):
        raise RuntimeError(f"stratified_split: parts of sizes "  # a bug here, not a user's
                           f"{ {k: len(v) for k, v in parts.items()} } do not split "
                           f"{len(labels)} items once each")
    return parts


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


def not_a_file(path) -> str | None:
    """None when `path` is a regular file (through symlinks), else why not: missing, a folder,
    a FIFO, a socket or a device. Checked with stat before anything opens the file: opening a
    FIFO waits for a writer that never comes."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:  # a symlink loop, a path through a file, no permission
        return f"cannot be read ({e.strerror})"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not an image file"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else
            "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
    return f"is {kind}, not a regular file"


class _Refused(ValueError):
    """A file refused before PIL decodes it: not a regular file, or too many pixels."""


@contextmanager
def _open_image(path):
    """PIL's Image.open with a pixel cap: an image over Image.MAX_IMAGE_PIXELS (PIL's default,
    about 89 million) is refused before it is decoded, where PIL only warns up to twice that
    (a few bytes of PNG can claim gigabytes of pixels)."""
    problem = not_a_file(path)
    if problem is not None:
        raise (FileNotFoundError if problem == "file not found" else _Refused)(problem)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
            raise _Refused(f"refused: {e}") from None
    with im:
        yield im


_IMAGE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError)


def verify_image(path: Path) -> str | None:
    """None if `path` decodes as an image, else the reason it does not."""
    try:
        with _open_image(path) as im:
            im.verify()  # checks structure (PNG checksums) without decoding every pixel
        return None
    except FileNotFoundError:
        return "file not found"
    except _Refused as e:
        return str(e)
    except _IMAGE_ERRORS as e:
        return f"not a readable image ({type(e).__name__}: {e})"


def load_rgb(path, mode: str = "RGB") -> Image.Image:
    """Open an image as `mode`; a missing file raises FileNotFoundError naming it, any other
    bad file (a folder, a FIFO, too many pixels, not an image) ValueError naming it."""
    try:
        with _open_image(path) as im:
            return im.convert(mode)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except _Refused as e:
        raise ValueError(f"{path}: {e}") from None
    except _IMAGE_ERRORS as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
