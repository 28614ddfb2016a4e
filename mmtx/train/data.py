"""Data for the engine: datasets by name or as objects, and loaders whose order and random
augmentations are pure functions of (seed, epoch, index), so a resumed run sees exactly the
batches an uninterrupted one would, whatever the prefetching, worker count or process count.

Every batch also carries `ITEM_SEED` (B,) int64, one seed per item from the same (seed, epoch,
index) (from (seed, index) alone in evaluation, so each evaluation draws alike): a task that
draws per-item randomness in its step (noise, timesteps, masks, condition drop) draws it from
these (`tasks.base.item_generators`), and then draws the same for an item whether it sits in
one process's batch of B or in one of N processes' batches of B / N.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data import build_dataset, collate

ITEM_SEED = "item_seed"  # the batch key of the per-item seeds


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of an item's own draws: a hash of (seed, epoch, index) that differs from the
    one SeededItems seeds the global RNGs with for the item's augmentation (equal seeds would
    give the task's noise the augmentation's numbers)."""
    x = ((seed * 1_000_003 + epoch) * 10_000_019 + index) * 6364136223846793005
    return (x + 1442695040888963407) % 2**63


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
        s = (self.seed * 1_000_003 + epoch) * 10_000_019 + i
        # torch's state is restored (1 us); numpy's and python's are only reseeded, because
        # saving them costs ~0.2 ms an item and the engine reseeds all RNGs every step anyway.
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)
        try:
            return self.dataset[i]
        finally:
            torch.set_rng_state(state)


class WithItemSeeds(Dataset):
    """SeededItems whose items come as (item seed, item), for `SeedCollate`."""

    def __init__(self, items: SeededItems, per_epoch: bool):
        self.items, self.per_epoch = items, per_epoch

    def __len__(self) -> int:
        return len(self.items)

    def _seed(self, key) -> int:
        epoch, i = key if isinstance(key, tuple) else (0, key)
        return item_seed(self.items.seed, epoch if self.per_epoch else 0, i)

    def __getitems__(self, keys: list) -> list:
        return list(zip((self._seed(k) for k in keys), self.items.__getitems__(keys)))

    def __getitem__(self, key):
        return self._seed(key), self.items[key]


class SeedCollate:
    """(seed, item) pairs -> the task's batch dict plus ITEM_SEED (B,) int64. A class, not a
    closure: loader workers pickle it."""

    def __init__(self, collate_fn):
        self.collate_fn = collate_fn

    def __call__(self, pairs: list) -> dict:
        batch = self.collate_fn([item for _, item in pairs])
        batch[ITEM_SEED] = torch.tensor([s for s, _ in pairs], dtype=torch.int64)
        return batch


def make_loader(dataset, batch_size: int, *, seed: int, train: bool, num_workers: int = 0,
                collate_fn=None) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), seed, shuffle=train)
    loader = DataLoader(
        # evaluation: seeds from the index alone (Accelerate counts the loader's passes into
        # the sampler's epoch), so every evaluation draws the same per item
        WithItemSeeds(SeededItems(dataset, seed), per_epoch=train), batch_size=batch_size,
        sampler=sampler,
        drop_last=train,  # equal-size train batches: the step count and loss scale never vary
        num_workers=num_workers, collate_fn=SeedCollate(collate_fn or collate),
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
