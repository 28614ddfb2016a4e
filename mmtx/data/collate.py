"""One batch convention: a dict of stacked tensors, long labels and lists of strings."""

from __future__ import annotations

import numbers
import random

import torch

from .scene_text import check_foil_kinds


def collate(items: list[dict], keys=None) -> dict:
    """Stack a list of item dicts into a batch dict (only `keys`, when given: a task that reads
    two keys need not batch, and move to the device, every caption and attribute dict).

    Tensors are stacked (same shape required), ints become a long tensor, floats a float
    tensor, bools a bool tensor; strings, None, dicts and anything else become lists.

    Keys starting with "object_" hold one row per object, (n, ...), and n varies by item: they
    are zero-padded (False for bool) to the batch's largest n, giving (B, N, ...), and
    `object_valid`, bool (B, N), is True on real objects. Every "object_" key of an item must
    have the same n.
    """
    if not items:
        raise ValueError("collate: expected a non-empty list of items, got an empty list")
    if keys is None:
        keys = list(items[0])
        for i, item in enumerate(items):
            if set(item) != set(keys):
                raise ValueError(f"collate: item {i} has keys {sorted(item)}, item 0 has "
                                 f"{sorted(keys)}")
    else:
        keys = list(keys)
        for i, item in enumerate(items):
            missing = [k for k in keys if k not in item]
            if missing:
                raise ValueError(f"collate: item {i} has no {missing}; its keys are "
                                 f"{sorted(item)}")
    batch = {}
    per_object = [k for k in keys if k.startswith("object_")]
    if per_object:
        batch.update(_pad_objects(items, per_object))
    for key in keys:
        if key in per_object:
            continue
        values = [item[key] for item in items]
        first = values[0]
        if isinstance(first, torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"collate: {key!r} tensors differ in shape: {sorted(shapes)}; "
                                 "resize images to one image_size")
            batch[key] = torch.stack(values)
        elif isinstance(first, bool):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, numbers.Integral):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, numbers.Real):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch


def _pad_objects(items: list[dict], keys: list[str]) -> dict:
    counts = []
    for i, item in enumerate(items):
        ns = {k: len(item[k]) for k in keys}
        if not all(isinstance(item[k], torch.Tensor) and item[k].dim() >= 1 for k in keys):
            raise ValueError(f"collate: item {i}: per-object keys {keys} must be tensors with "
                             f"one row per object, got {[type(item[k]).__name__ for k in keys]}")
        if len(set(ns.values())) > 1:
            raise ValueError(f"collate: item {i} has different object counts per key: {ns}")
        counts.append(ns[keys[0]])
    num = max(counts)
    out = {"object_valid": torch.arange(num)[None, :] < torch.tensor(counts)[:, None]}  # (B, N)
    for key in keys:
        rest = {tuple(item[key].shape[1:]) for item in items}
        if len(rest) > 1:
            raise ValueError(f"collate: {key!r} rows differ in shape: {sorted(rest)}")
        first = items[0][key]
        padded = first.new_zeros((len(items), num, *first.shape[1:]))  # (B, N, ...)
        for b, item in enumerate(items):
            padded[b, : len(item[key])] = item[key]
        out[key] = padded
    return out


class CaptionCollate:
    """collate() plus tokenised captions: `caption_ids` (B, L) long, `caption_mask` (B, L) bool.

    Captions are encoded with bos/eos, cut to `max_len` (the eos is kept as the last token so
    a decoder always learns to stop) and right-padded with pad_id; the mask is True on real
    tokens. L is the longest caption in the batch, or `max_len` when `pad_to_max_len`.
    A class rather than a closure so DataLoader workers can pickle it.

    With `foils` (a foil kind or several, items from ShapesDataset(return_foils=...)), one foil
    per item is encoded too, drawn uniformly (Python's `random`, which the engine seeds every
    step) from the kinds the item has: `foil_ids` / `foil_mask` like the captions, `foil_kind`
    (B,) the kind drawn, and `has_foil` (B,) bool, False where the item has none (its row then
    holds the caption itself, its kind None; pass has_foil as clip_loss's hard_negative_mask).
    Drawn rather than taken in order: with the first existing kind, a scene whose colours can
    be swapped would never show its order foils, and a model would never learn from them.
    """

    def __init__(self, tokenizer, max_len: int = 32, pad_to_max_len: bool = False,
                 key: str = "caption", foils=None):
        if max_len < 2:
            raise ValueError(f"max_len: expected >= 2 (room for bos and eos), got {max_len}")
        self.tokenizer, self.max_len, self.pad_to_max_len, self.key = (
            tokenizer, int(max_len), pad_to_max_len, key)
        self.foils = None if foils is None else check_foil_kinds(foils)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        seqs = []
        for text in captions:
            ids = tok.encode(text, add_special=True)
            if len(ids) > self.max_len:
                ids = ids[: self.max_len - 1] + [tok.eos_id]
            seqs.append(ids)
        length = self.max_len if self.pad_to_max_len else max(len(s) for s in seqs)
        ids = torch.full((len(seqs), length), tok.pad_id, dtype=torch.long)  # (B, L)
        mask = torch.zeros((len(seqs), length), dtype=torch.bool)  # (B, L)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = True
        return ids, mask

    def __call__(self, items: list[dict]) -> dict:
        batch = collate(items)
        if self.key not in batch:
            raise ValueError(f"CaptionCollate: items have no {self.key!r} key; "
                             f"keys are {sorted(batch)}")
        batch["caption_ids"], batch["caption_mask"] = self.encode(batch[self.key])
        if self.foils:
            missing = [f"foil_{k}" for k in self.foils if f"foil_{k}" not in batch]
            if missing:
                raise ValueError(f"CaptionCollate: items have no {missing} key(s); build the "
                                 f"dataset with return_foils={list(self.foils)}")
            texts, kinds = [], []
            for b, caption in enumerate(batch[self.key]):
                have = [k for k in self.foils if batch[f"foil_{k}"][b] is not None]
                kind = random.choice(have) if have else None
                texts.append(caption if kind is None else batch[f"foil_{kind}"][b])
                kinds.append(kind)
            batch["foil_ids"], batch["foil_mask"] = self.encode(texts)
            batch["foil_kind"] = kinds
            has = [k is not None for k in kinds]
            batch["has_foil"] = torch.tensor(has, dtype=torch.bool)  # (B,)
        return batch
