"""scikit-learn's 8x8 handwritten digits: real data that ships with scikit-learn (no download).

1,797 images of the digits 0-9 with a fixed stratified split (70% train, 10% val, 20% test; the
split does not depend on any run seed, so every run is scored on the same 359 test images).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch.utils.data import Dataset

from .base import check_split, stratified_split
from .transforms import STATS

SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}
SPLIT_SEED = 0  # fixed: the split is part of the dataset's definition


@lru_cache(maxsize=1)
def _load_digits():
    from sklearn.datasets import load_digits

    return load_digits()


class DigitsDataset(Dataset):
    """Items: `image` (1, 8, 8) float (0..16 scaled to [0, 1], then normalised), `label` int.

    transform: applied to the [0, 1] float image tensor (1, 8, 8) instead of the default
    normalisation (build_transforms("digits", ...) gives pipelines that normalise).
    """

    def __init__(self, split: str = "train", transform=None):
        self.split = check_split(split)
        digits = _load_digits()
        index = stratified_split(digits.target, SPLIT_FRACTIONS, seed=SPLIT_SEED)[split]
        images = torch.from_numpy(digits.images[index]).float().div_(16.0)  # (N, 8, 8) in [0, 1]
        self.images = images.unsqueeze(1)  # (N, 1, 8, 8)
        self._labels = [int(t) for t in digits.target[index]]
        self.source_indices = index  # rows of load_digits(), for checking disjointness
        self.transform = transform
        stats = STATS["digits"]
        self.mean, self.std = stats.mean, stats.std
        self.num_classes, self.in_chans, self.image_size = 10, 1, 8
        self.class_names = [str(d) for d in range(10)]

    @property
    def labels(self) -> list[int]:
        return self._labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        else:
            image = (image - self.mean[0]) / self.std[0]
        return {"image": image, "label": self._labels[i]}

    def __repr__(self) -> str:
        return f"DigitsDataset(split={self.split!r}, n={len(self)})"
