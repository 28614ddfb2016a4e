"""Text datasets, all built locally (no download): language-model windows over a text file or
an embedded toy corpus, synthetic seq2seq (reverse / sort), and long-range recall.

Items are dicts of fixed-length long tensors, so the default `collate` stacks them.
"""

from __future__ import annotations

import inspect
import random
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..io import read_utf8
from ..keys import check_keys
from .base import check_split
from .tokenizers import ByteTokenizer, WordTokenizer

_COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
_SHAPES = ["circle", "square", "triangle", "star"]
_PLACES = ["above", "below", "left of", "right of"]
# "apple" in two senses, in one frame: "{who} {did} the {what} apple {prep} the {thing} ." The
# frame and the prepositions are shared, so only the slot words tell the senses apart; a model
# trained on the corpus can learn which slot words go together, and a probe fit on sentences
# that use some of them can be tested on sentences that use only the others.
_APPLE_SLOTS = (
    (["farmers", "children", "cooks", "bakers", "pickers", "grandparents"],  # fruit
     ["picked", "ate", "peeled", "sliced", "washed", "baked"],
     ["ripe", "juicy", "sweet", "sour", "crisp", "bruised"],
     ["orchard", "pie", "tree", "basket", "cider", "harvest"]),
    (["investors", "analysts", "engineers", "reporters", "lawyers", "customers"],  # company
     ["praised", "sued", "watched", "followed", "criticized", "reviewed"],
     ["latest", "rumored", "official", "annual", "quarterly", "new"],
     ["earnings", "phone", "store", "software", "stock", "laptop"]),
)
_APPLE_PREPS = ["near", "with", "after", "for"]


def _apple_sentence(rng: random.Random, sense: int, words: slice = slice(None)) -> str:
    who, did, what, thing = (rng.choice(slot[words]) for slot in _APPLE_SLOTS[sense])
    return f"{who} {did} the {what} apple {rng.choice(_APPLE_PREPS)} the {thing} ."


def toy_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` simple English sentences: shape scenes, counting, and both senses of "apple"."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            a, b = rng.sample(_SHAPES, 2)
            out.append(f"the {rng.choice(_COLORS)} {a} is {rng.choice(_PLACES)} the "
                       f"{rng.choice(_COLORS)} {b} .")
        elif kind < 0.7:
            k = rng.randint(1, 5)
            number = ["one", "two", "three", "four", "five"][k - 1]
            out.append(f"there {'is' if k == 1 else 'are'} {number} "
                       f"{rng.choice(_COLORS)} {rng.choice(_SHAPES)}{'' if k == 1 else 's'} .")
        else:
            out.append(_apple_sentence(rng, int(kind >= 0.85)))
    return out


def apple_sentences(n: int, seed: int = 0, words: slice = slice(None)
                    ) -> tuple[list[str], list[int]]:
    """(sentences, sense) with sense 0 = fruit, 1 = company, balanced. `words` picks which of
    the six words per slot may appear (so a probe can be tested on words it was not fit on).
    """
    rng = random.Random(seed)
    labels = [i % 2 for i in range(n)]
    return [_apple_sentence(rng, y, words) for y in labels], labels


def _split_range(n: int, split: str) -> tuple[int, int]:
    """90 / 5 / 5 contiguous parts of a stream of length n."""
    a, b = int(0.9 * n), int(0.95 * n)
    return {"train": (0, a), "val": (a, b), "test": (b, n)}[split]


class TextLMDataset(Dataset):
    """Windows of `seq_len + 1` tokens over a text (items {"ids": (seq_len + 1,)}).

    path: a UTF-8 text file; None uses `toy_sentences(num_sentences)`. level: "word" (vocabulary
    built from the whole text, so every split shares it) or "byte". Splits are contiguous 90/5/5
    parts of the token stream; windows overlap by half in train.
    """

    def __init__(self, split: str = "train", path: str | None = None, level: str = "word",
                 seq_len: int = 32, num_sentences: int = 4000, corpus_seed: int = 0):
        check_split(split)
        if level not in ("word", "byte"):
            raise ValueError(f"level: expected 'word' or 'byte', got {level!r}")
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"path: text file not found: {path}")
            text = read_utf8(path, "path: text file")
        else:
            text = "\n".join(toy_sentences(num_sentences, corpus_seed))
        self.tokenizer = WordTokenizer.from_texts(text.splitlines()) if level == "word" \
            else ByteTokenizer()
        sep = "\n" if level == "byte" else " "
        stream = []
        for line in text.splitlines():
            stream += self.tokenizer.encode(line + (sep if level == "byte" else ""),
                                            add_special=level == "word")
        lo, hi = _split_range(len(stream), split)
        self.tokens = torch.tensor(stream[lo:hi], dtype=torch.long)
        if len(self.tokens) < seq_len + 1:
            raise ValueError(f"seq_len: {seq_len} is longer than the {split} split "
                             f"({len(self.tokens)} tokens)")
        self.seq_len, self.vocab_size = seq_len, self.tokenizer.vocab_size
        self.stride = seq_len // 2 if split == "train" else seq_len
        self.num_windows = (len(self.tokens) - seq_len - 1) // self.stride + 1

    def __len__(self):
        return self.num_windows

    def __getitem__(self, i):
        start = i * self.stride
        return {"ids": self.tokens[start:start + self.seq_len + 1]}


class Seq2SeqDataset(Dataset):
    """Synthetic sequence transduction: "reverse" or "sort" a random digit string.

    Ids: 0 pad, 1 bos, 2 eos, 3 ... vocab_size-1 symbols. Items: src (max_len,) right-padded,
    src_mask (max_len,) bool, tgt (max_len + 2,) = bos, output, eos, padding.
    """

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, split: str = "train", task: str = "reverse", num_samples: int = 4000,
                 min_len: int = 3, max_len: int = 10, vocab_size: int = 13, seed: int = 0):
        check_split(split)
        if task not in ("reverse", "sort"):
            raise ValueError(f"task: expected 'reverse' or 'sort', got {task!r}")
        if not 1 <= min_len <= max_len:
            raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got "
                             f"{min_len}, {max_len}")
        self.task, self.max_len, self.vocab_size = task, max_len, vocab_size
        n = {"train": num_samples, "val": max(64, num_samples // 10),
             "test": max(64, num_samples // 10)}[split]
        g = torch.Generator().manual_seed(seed * 3 + {"train": 0, "val": 1, "test": 2}[split])
        self.lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
        self.symbols = torch.randint(3, vocab_size, (n, max_len), generator=g)

    def __len__(self):
        return len(self.lengths)

    def target(self, seq: torch.Tensor) -> torch.Tensor:
        return seq.flip(0) if self.task == "reverse" else seq.sort().values

    def __getitem__(self, i):
        n = int(self.lengths[i])
        seq = self.symbols[i, :n]
        src = torch.zeros(self.max_len, dtype=torch.long)
        src[:n] = seq
        tgt = torch.zeros(self.max_len + 2, dtype=torch.long)
        tgt[0], tgt[1:n + 1], tgt[n + 1] = self.bos_id, self.target(seq), self.eos_id
        return {"src": src, "src_mask": src != self.pad_id, "tgt": tgt}


class RecallDataset(Dataset):
    """Long-range recall: a random token string; the label is the token `distance` positions
    before the last one. Items {"ids": (distance + prefix + 1,), "label": int}.

    marked=True (the default) writes that token in a marked form (ids `vocab_size` and up), so
    the question is "which symbol was marked?": attention can look the marked token up by its
    content at any distance, while an RNN must carry it through `distance` updates. With
    marked=False the position alone says which token counts, and the model must learn to count.
    """

    def __init__(self, split: str = "train", distance: int = 16, num_samples: int = 2000,
                 vocab_size: int = 8, prefix: int = 4, marked: bool = True, seed: int = 0):
        check_split(split)
        if distance < 1:
            raise ValueError(f"distance: expected >= 1, got {distance}")
        n = {"train": num_samples, "val": max(200, num_samples // 10),
             "test": max(500, num_samples // 4)}[split]
        g = torch.Generator().manual_seed(seed * 3 + {"train": 0, "val": 1, "test": 2}[split])
        self.seq_len = distance + prefix + 1
        self.ids = torch.randint(0, vocab_size, (n, self.seq_len), generator=g)
        self.labels = self.ids[:, -1 - distance].clone()
        if marked:
            self.ids[:, -1 - distance] += vocab_size
        self.num_classes = vocab_size
        self.vocab_size = 2 * vocab_size if marked else vocab_size
        self.max_len, self.distance = self.seq_len, distance

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"ids": self.ids[i], "label": int(self.labels[i])}


def _builder(cls):
    def build(split, root, download, transform, image_size, kwargs):
        valid = [p for p in inspect.signature(cls).parameters if p != "split"]
        check_keys(kwargs, valid, "option", of=f"dataset {cls.__name__}")
        return cls(split=split, **kwargs)
    return build


# Added to mmtx.data.build.BUILDERS (by name) so configs can say data.name: text_lm.
TEXT_BUILDERS = {"text_lm": _builder(TextLMDataset), "seq2seq_synth": _builder(Seq2SeqDataset),
                 "recall": _builder(RecallDataset)}
