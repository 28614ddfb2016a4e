"""scikit-learn's 8x8 handwritten digits: real data that ships with scikit-learn (no download).

1,797 images of the digits 0-9 with a fixed stratified split (70% train, 10% val, 20% test; the
split does not depend on any run seed, so every run is scored on the same 359 test images).
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .base import check_split, stratified_split
from .transforms import STATS

SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}
SPLIT_SEED = 0  # fixed: the split is part of the dataset's definition


@lru_cache(maxsize=1)
def _load_digits():
    from sklearn.datasets import load_digits

    return load_digits()


NORMALIZE = ("stats", "symmetric")


class DigitsDataset(Dataset):
    """Items: `image` (1, S, S) float (0..16 scaled to [0, 1], then normalised), `label` int.

    image_size: side S; the 8 x 8 originals are upscaled once, at load (bilinear, as
        build_transforms' Resize does). normalize: "stats" (the train split's mean and std,
        what classifiers read) or "symmetric" ([0, 1] -> [-1, 1], what generators sample and
        the digits judge reads).
    transform: applied to the [0, 1] float image tensor (1, S, S) instead of the default
    normalisation (build_transforms("digits", ...) gives pipelines that normalise).
    """

    def __init__(self, split: str = "train", transform=None, image_size: int = 8,
                 normalize: str = "stats"):
        self.split = check_split(split)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size: expected an int >= 1, got {image_size!r}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize: expected one of {', '.join(NORMALIZE)}, "
                             f"got {normalize!r}")
        digits = _load_digits()
        index = stratified_split(digits.target, SPLIT_FRACTIONS, seed=SPLIT_SEED)[split]
        images = torch.from_numpy(digits.images[index]).float().div_(16.0)  # (N, 8, 8) in [0, 1]
        images = images.unsqueeze(1)  # (N, 1, 8, 8)
        if image_size != 8:
            images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                                   antialias=True, align_corners=False).clamp_(0, 1)
        self.images = images  # (N, 1, S, S)
        self._labels = [int(t) for t in digits.target[index]]
        self.source_indices = index  # rows of load_digits(), for checking disjointness
        self.transform = transform
        stats = STATS["digits"]
        self.normalize = normalize
        self.mean, self.std = (stats.mean, stats.std) if normalize == "stats" else ((0.5,), (0.5,))
        self.num_classes, self.in_chans, self.image_size = 10, 1, image_size
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
