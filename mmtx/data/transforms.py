"""torchvision.transforms.v2 pipelines per dataset: presets "none", "light" and "strong".

A pipeline takes what a dataset holds (a PIL image or a uint8 / [0, 1] float tensor) and returns
a normalised float tensor (C, H, W). Augmentations respect what the labels and captions say:
shapes are never flipped (captions say "to the left of") nor recoloured (colour is a label), and
digits are never flipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torchvision.transforms import v2

PRESETS = ("none", "light", "strong")


@dataclass(frozen=True)
class Stats:
    """Normalisation and defaults of one dataset; `kind` picks the augmentations."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    kind: str  # "shapes" | "digits" | "natural" | "folder"
    flip: bool = True


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STATS = {
    "shapes": Stats((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 32, "shapes", flip=False),
    # Mean/std of the digits train split after scaling 0..16 to [0, 1].
    "digits": Stats((0.3057,), (0.3763,), 8, "digits", flip=False),
    "mnist": Stats((0.1307,), (0.3081,), 28, "digits", flip=False),
    "fashion_mnist": Stats((0.2860,), (0.3530,), 28, "digits"),
    "cifar10": Stats((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 32, "natural"),
    "cifar100": Stats((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 32, "natural"),
    "image_folder": Stats(IMAGENET_MEAN, IMAGENET_STD, 64, "folder"),
    # Caption folders are not flipped: captions may say "left" and "right".
    "caption_folder": Stats(IMAGENET_MEAN, IMAGENET_STD, 64, "folder", flip=False),
}


def _augment(stats: Stats, preset: str, size: int) -> list:
    from torchvision.transforms import v2

    """Augmentations on the uint8 image, before scaling to float."""
    if stats.kind == "folder":  # photos of any size: the random crop also resizes
        ops = [v2.RandomResizedCrop(size, scale=(0.6 if preset == "strong" else 0.8, 1.0),
                                    antialias=True)]
    elif stats.kind == "natural":
        ops = [v2.RandomCrop(size, padding=max(1, size // 8), padding_mode="reflect")]
    elif stats.kind == "digits":
        ops = [v2.RandomAffine(degrees=10 if preset == "strong" else 0, translate=(0.1, 0.1),
                               scale=(0.9, 1.1) if preset == "strong" else None)]
    else:  # shapes: small shifts, and for "strong" small rotations (a diamond stays a diamond)
        if preset == "light":
            ops = [v2.RandomCrop(size, padding=max(1, size // 16), fill=0)]
        else:
            ops = [v2.RandomAffine(degrees=10, translate=(0.08, 0.08), scale=(0.9, 1.1)),
                   v2.ColorJitter(brightness=0.2, contrast=0.2)]
    if stats.flip:
        ops.append(v2.RandomHorizontalFlip())
    if preset == "strong" and stats.kind in ("natural", "folder"):
        ops.append(v2.RandAugment(num_ops=2, magnitude=9))
    return ops


def build_transforms(dataset_name: str, preset: str = "none", image_size=None, train: bool = True,
                     *, mean=None, std=None) -> v2.Compose:
    """The v2 pipeline for `dataset_name`; augmentation only when `train` and preset != "none".

    image_size: output side (default: the dataset's own); images of another size are resized
    (folders: resized and centre-cropped). mean / std override the dataset's normalisation.
    """
    if dataset_name not in STATS:
        raise ValueError(f"dataset_name: expected one of {', '.join(STATS)}, "
                         f"got {dataset_name!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)}, got {preset!r}")
    from torchvision.transforms import v2  # here, not at import: torchvision takes seconds

    stats = STATS[dataset_name]
    size = int(image_size or stats.image_size)
    ops: list = [v2.ToImage()]
    augment = train and preset != "none"
    if stats.kind == "folder" and not augment:
        ops += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    elif stats.kind != "folder" and size != stats.image_size:
        ops.append(v2.Resize((size, size), antialias=True))
    if augment:
        ops += _augment(stats, preset, size)
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if augment and preset == "strong" and stats.kind == "shapes":
        ops.append(v2.GaussianNoise(sigma=0.03))
    ops.append(v2.Normalize(list(mean or stats.mean), list(std or stats.std)))
    if augment and preset == "strong" and stats.kind in ("natural", "folder"):
        ops.append(v2.RandomErasing(p=0.25))
    return v2.Compose(ops)


def denormalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """Undo Normalize: (..., C, H, W) back to [0, 1] (clamped), e.g. for plotting samples."""
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * s + m).clamp(0, 1)
