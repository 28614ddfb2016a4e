"""One batch convention: a dict of stacked tensors, long labels and lists of strings."""

from __future__ import annotations

import numbers

import torch


def collate(items: list[dict]) -> dict:
    """Stack a list of item dicts into a batch dict.

    Tensors are stacked (same shape required), ints become a long tensor, floats a float
    tensor, bools a bool tensor; strings, dicts and anything else become lists.
    """
    if not items:
        raise ValueError("collate: expected a non-empty list of items, got an empty list")
    keys = list(items[0])
    for i, item in enumerate(items):
        if set(item) != set(keys):
            raise ValueError(f"collate: item {i} has keys {sorted(item)}, item 0 has "
                             f"{sorted(keys)}")
    batch = {}
    for key in keys:
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


class CaptionCollate:
    """collate() plus tokenised captions: `caption_ids` (B, L) long, `caption_mask` (B, L) bool.

    Captions are encoded with bos/eos, cut to `max_len` (the eos is kept as the last token so
    a decoder always learns to stop) and right-padded with pad_id; the mask is True on real
    tokens. L is the longest caption in the batch, or `max_len` when `pad_to_max_len`.
    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer, max_len: int = 32, pad_to_max_len: bool = False,
                 key: str = "caption"):
        if max_len < 2:
            raise ValueError(f"max_len: expected >= 2 (room for bos and eos), got {max_len}")
        self.tokenizer, self.max_len, self.pad_to_max_len, self.key = (
            tokenizer, int(max_len), pad_to_max_len, key)

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
        return batch
