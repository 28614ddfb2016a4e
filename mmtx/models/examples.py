"""Example inputs per model family: a small build of any registered model and a batch for it.

Each family module registers its recipe next to its factories (`register_example("vit",
images_to_logits(patch_size=4, dim=32, ...))`), so code over every registered model (the tests,
a FLOP or shape check) needs no table of families: `model_example(name)` gives the overrides of
a test-size build, forward's positional inputs and the output shape to expect.

    ex = model_example("vit_tiny_patch4_32")
    out = ex.build("vit_tiny_patch4_32")(*ex.inputs)   # out.shape == ex.out_shape
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .registry import ModelInfo, create_model, model_info

NUM_CLASSES = 3  # classes of every example with a class head or a class condition
VOCAB = 40  # vocabulary of every example with tokens


@dataclass(frozen=True)
class Example:
    overrides: dict  # keyword overrides of a small build
    inputs: tuple  # forward's positional arguments, a batch
    out_shape: tuple  # what forward returns for them (through `wrap`)
    # for models whose forward returns several tensors: a module returning one of them
    wrap: Callable[[nn.Module], nn.Module] | None = field(default=None, compare=False)

    def build(self, name: str) -> nn.Module:
        model = create_model(name, **self.overrides)
        return self.wrap(model) if self.wrap is not None else model


Recipe = Callable[[ModelInfo, dict, int], Example]  # (info, overrides, batch) -> Example
_RECIPES: dict[str, Recipe] = {}


def register_example(family: str, recipe: Recipe) -> None:
    if family in _RECIPES:
        raise ValueError(f"an example recipe for family {family!r} is registered twice")
    _RECIPES[family] = recipe


def model_example(name: str, batch: int = 2, **overrides) -> Example:
    """A small build of the registered model `name` (overrides win over the recipe's) and an
    input batch of `batch` items; ValueError when its family registered no recipe."""
    info = model_info(name)
    if info.family not in _RECIPES:
        raise ValueError(f"model {name!r}: family {info.family!r} has no example recipe; "
                         f"register one with mmtx.models.examples.register_example")
    return _RECIPES[info.family](info, overrides, batch)


def images_to_logits(**small) -> Recipe:
    """Images (B, 2, 8, 8) -> class logits (B, num_classes)."""
    def recipe(info, overrides, batch):
        kw = {"num_classes": NUM_CLASSES, "in_chans": 2, "img_size": 8, **small, **overrides}
        x = torch.randn(batch, kw["in_chans"], kw["img_size"], kw["img_size"])
        return Example(kw, (x,), (batch, kw["num_classes"]))
    return recipe


def tokens_to_logits(**small) -> Recipe:
    """Token ids (B, 8) -> per-token vocabulary logits, by task: causal_lm and masked_lm
    (B, 8, V); seq2seq reads (source (B, 8), target (B, 5)) -> (B, 5, V)."""
    def recipe(info, overrides, batch):
        # No [CLS] pooler for the MLM output: it does not use it (it serves the classifier head).
        extra = {"pooler": False} if info.task == "masked_lm" else {}
        kw = {"vocab_size": VOCAB, **small, **extra, **overrides}
        ids = torch.randint(0, VOCAB, (batch, 8))
        if info.task in ("causal_lm", "masked_lm"):
            return Example(kw, (ids,), (batch, 8, kw["vocab_size"]))
        if info.task == "seq2seq":
            tgt = torch.randint(0, VOCAB, (batch, 5))
            return Example(kw, (ids, tgt), (batch, 5, kw["vocab_size"]))
        raise ValueError(f"no example recipe for text task {info.task!r} ({info.name})")
    return recipe


def tokens_to_class(**small) -> Recipe:
    """Token ids (B, 8) -> class logits (B, num_classes)."""
    def recipe(info, overrides, batch):
        kw = {"vocab_size": VOCAB, "num_classes": NUM_CLASSES, **small, **overrides}
        return Example(kw, (torch.randint(0, VOCAB, (batch, 8)),), (batch, kw["num_classes"]))
    return recipe


def noisy_images(**small) -> Recipe:
    """A generator's (x (B, 2, 8, 8), t (B,), y (B,)) -> a prediction of x's shape."""
    def recipe(info, overrides, batch):
        kw = {"img_size": 8, "in_chans": 2, "num_classes": NUM_CLASSES, **small, **overrides}
        x = torch.randn(batch, kw["in_chans"], 8, 8)
        return Example(kw, (x, torch.rand(batch), torch.randint(0, NUM_CLASSES, (batch,))),
                       tuple(x.shape))
    return recipe


def image_and_text(out: str, wrap=None, **small) -> Recipe:
    """Images (B, 2, 8, 8) + token ids (B, 6) -> per-token logits (B, 6, V) (out="tokens") or,
    through `wrap`, (B, B) image-text logits (out="pairs")."""
    def recipe(info, overrides, batch):
        # one 32-wide block in each tower
        kw = {"img_size": 8, "patch_size": 4, "in_chans": 2, "vocab_size": VOCAB, "dim": 32,
              "depth": 1, "num_heads": 2, "max_len": 16, "text_dim": 32, "text_depth": 1,
              "text_heads": 2, **small, **overrides}
        inputs = (torch.randn(batch, kw["in_chans"], 8, 8), torch.randint(0, VOCAB, (batch, 6)))
        shape = (batch, 6, kw["vocab_size"]) if out == "tokens" else (batch, batch)
        return Example(kw, inputs, shape, wrap)
    return recipe
