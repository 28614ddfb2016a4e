"""Data for the engine: datasets by name or as objects, and loaders whose order and random
augmentations are pure functions of (seed, epoch, index), so a resumed run sees exactly the
batches an uninterrupted one would, whatever the prefetching, worker count or process count.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import build_dataset, collate


class EpochSampler(Sampler):
    """A permutation of range(n) drawn from seed + epoch. Yields (epoch, index) pairs, so
    the dataset wrapper can seed each item's augmentation from them."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = range(self.n)
        return iter([(self.epoch, i) for i in order])


class SeededItems(Dataset):
    """Wraps a dataset: item (epoch, i) is fetched with torch, numpy and python RNGs seeded
    from (seed, epoch, i)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        # A dataset whose items draw nothing from the global RNGs (it says so with
        # `uses_global_rng = False`) skips the seeding: ~40% of a cached item's fetch time.
        self.random = getattr(dataset, "uses_global_rng", True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, keys: list) -> list:
        """A batch of items (DataLoader calls this): a dataset that draws nothing from the
        global RNGs and fetches batches itself (`__getitems__`) gets the indices at once."""
        if self.random or not hasattr(self.dataset, "__getitems__"):
            return [self[k] for k in keys]
        return self.dataset.__getitems__([k[1] if isinstance(k, tuple) else k for k in keys])

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        if not self.random:
            return self.dataset[i]
        item_seed = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        # torch's state is restored (1 us); numpy's and python's are only reseeded, because
        # saving them costs ~0.2 ms an item and the engine reseeds all RNGs every step anyway.
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(item_seed)
        np.random.seed(item_seed % 2**32)
        random.seed(item_seed)
        try:
            return self.dataset[i]
        finally:
            torch.set_rng_state(state)


def make_loader(dataset, batch_size: int, *, seed: int, train: bool, num_workers: int = 0,
                collate_fn=None) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), seed, shuffle=train)
    loader = DataLoader(
        SeededItems(dataset, seed), batch_size=batch_size, sampler=sampler,
        drop_last=train,  # equal-size train batches: the step count and loss scale never vary
        num_workers=num_workers, collate_fn=collate_fn or collate,
        generator=torch.Generator().manual_seed(seed),  # keeps the global RNG untouched
        persistent_workers=False,
    )
    return loader, sampler


def build_datasets(data_cfg, seed: int, data=None) -> dict:
    """{"train": ds, "val": ds or None, "test": ds or None}.

    `data` may be a dataset object (the training split), a mapping split -> dataset, or None
    (then every split is built by name with mmtx.data.build_dataset).
    """
    splits = {"train": "train", "val": data_cfg.val_split, "test": data_cfg.test_split}
    if data is not None:
        if isinstance(data, Mapping):
            unknown = set(data) - set(splits)
            if unknown:
                raise ValueError(f"data: expected keys among train/val/test, got {sorted(unknown)}")
            if "train" not in data:
                raise ValueError("data: a mapping of splits needs a 'train' dataset")
            return {k: data.get(k) for k in splits}
        return {"train": data, "val": None, "test": None}
    data_seed = seed if data_cfg.seed is None else data_cfg.seed
    augment = {True: "light", False: "none"}.get(data_cfg.augment, data_cfg.augment)
    out = {}
    for key, split in splits.items():
        if split is None:
            out[key] = None
            continue
        out[key] = build_dataset(
            data_cfg.name, split=split, root=data_cfg.root, download=data_cfg.download,
            fraction=data_cfg.fraction if key == "train" else 1.0, seed=data_seed,
            augment=augment if key == "train" else "none", **data_cfg.args)
    return out
