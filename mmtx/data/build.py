"""build_dataset: every dataset by name, one signature, so configs switch data with one line."""

from __future__ import annotations

import difflib
import inspect
from pathlib import Path

from torch.utils.data import Dataset

from ..keys import check_keys
from .base import SubsetDataset, check_split, stratified_indices
from .captions import ImageCaptionFolder
from .digits import DigitsDataset
from .shapes import ShapesDataset
from .transforms import PRESETS, build_transforms
from .vision import ImageFolderDataset, TorchvisionDataset


def _shapes(split, root, download, transform, image_size, kwargs):
    # build_dataset's `seed` picks the fraction subset; the scene seed is `scene_seed`, so a
    # sweep over run seeds keeps one test set.
    _check_kwargs("shapes", ShapesDataset, kwargs, exclude=("split", "transform", "image_size"))
    kwargs = dict(kwargs)
    if "scene_seed" in kwargs:
        kwargs["seed"] = kwargs.pop("scene_seed")
    return ShapesDataset(split=split, transform=transform, image_size=image_size or 32, **kwargs)


def _digits(split, root, download, transform, image_size, kwargs):
    # Upscaled once at load (DigitsDataset), not per item; an augmenting transform's Resize
    # then sees images of its own size already.
    _check_kwargs("digits", DigitsDataset, kwargs, exclude=("split", "transform", "image_size"))
    return DigitsDataset(split=split, transform=transform, image_size=int(image_size or 8),
                         **kwargs)


def _torchvision(name):
    def build(split, root, download, transform, image_size, kwargs):
        _check_kwargs(name, TorchvisionDataset, kwargs,
                      exclude=("name", "split", "root", "download", "transform", "image_size"))
        return TorchvisionDataset(name, split, root=root, download=download,
                                  transform=transform, image_size=image_size)
    return build


def _need_root(name, root) -> Path:
    if root is None:
        raise ValueError(f"root: the {name!r} dataset needs root=<folder>, got None")
    return Path(root)


def _image_folder(split, root, download, transform, image_size, kwargs):
    _check_kwargs("image_folder", ImageFolderDataset, kwargs,
                  exclude=("root", "split", "transform", "image_size"))
    return ImageFolderDataset(_need_root("image_folder", root), split, transform=transform,
                              image_size=image_size, **kwargs)


def _caption_folder(split, root, download, transform, image_size, kwargs):
    _check_kwargs("caption_folder", ImageCaptionFolder, kwargs,
                  exclude=("root", "split", "transform", "image_size"))
    return ImageCaptionFolder(_need_root("caption_folder", root), split=split,
                              transform=transform, image_size=image_size, **kwargs)


BUILDERS = {
    "shapes": _shapes,
    "digits": _digits,
    "cifar10": _torchvision("cifar10"),
    "cifar100": _torchvision("cifar100"),
    "mnist": _torchvision("mnist"),
    "fashion_mnist": _torchvision("fashion_mnist"),
    "image_folder": _image_folder,
    "caption_folder": _caption_folder,
}

from .text import TEXT_BUILDERS  # noqa: E402  text_lm, seq2seq_synth, recall (mmtx/data/text.py)

BUILDERS.update(TEXT_BUILDERS)


def list_datasets() -> list[str]:
    return list(BUILDERS)


def _check_kwargs(name, cls, kwargs, exclude=()) -> None:
    valid = [p for p in inspect.signature(cls).parameters if p not in exclude and p != "self"]
    if name == "shapes":
        valid = [p for p in valid if p != "seed"] + ["scene_seed"]
    check_keys(kwargs, valid, "option", of=f"dataset {name!r}")


def _nearest_first(name: str, names: list[str]) -> list[str]:
    close = difflib.get_close_matches(name, names, n=len(names), cutoff=0.0)
    return close + [n for n in names if n not in close]


def build_dataset(name: str, split: str = "train", *, root=None, download: bool = False,
                  fraction: float = 1.0, seed: int = 0, transform=None, augment: str = "none",
                  image_size=None, **kwargs) -> Dataset:
    """A dataset by name; items are dicts with at least `image` and `label`.

    Args:
        name: one of list_datasets(): shapes (embedded default), digits, cifar10, cifar100,
            mnist, fashion_mnist, image_folder, caption_folder.
        split: "train", "val" or "test".
        root: data folder (torchvision datasets default to $MMTX_DATA_ROOT or
            ~/.cache/mmtx/data; folders need it).
        download: let torchvision download missing files (never done otherwise).
        fraction: keep a deterministic, class-stratified fraction of the train split (seeded by
            `seed`); val and test are never subsampled.
        transform: replaces the dataset's image pipeline (for whichever split is asked for).
        augment: "none" | "light" | "strong"; applied to the train split only.
        image_size: output side; datasets resize to it where it differs from their own.
        kwargs: dataset options, e.g. shapes: num_samples, task, num_objects, noise, clutter,
            cache, scene_seed, return_objects, return_foils; folders: skip_bad.
    """
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names (nearest first): "
                         f"{', '.join(_nearest_first(str(name), list(BUILDERS)))}")
    check_split(split)
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if isinstance(augment, bool):  # the engine's data.augment is a bool: on = "light"
        augment = "light" if augment else "none"
    if augment not in PRESETS:
        raise ValueError(f"augment: expected one of {', '.join(PRESETS)}, got {augment!r}")
    if transform is None and split == "train" and augment != "none":
        transform = build_transforms(name, augment, image_size, train=True)
    ds = BUILDERS[name](split, root, download, transform, image_size, kwargs)
    if split == "train" and fraction < 1.0:
        ds = SubsetDataset(ds, stratified_indices(ds.labels, fraction, seed))
    return ds
