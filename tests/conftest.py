"""Fixtures shared by several test files.

`single_thread`: one torch thread for a test. Test models are tiny, and on a shared 2-core
machine thread sync costs far more than the math (use it with
`pytestmark = pytest.mark.usefixtures("single_thread")`).

`small_model(name, **overrides)` builds any registered model at test size, with an input batch
and the output shape to expect. The recipe is chosen by the model's family and task from the
registry (`model_info`), never by its name: a new family adds one builder here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mmtx.models import create_model, model_info

B = 2  # batch size of every small input
NUM_CLASSES = 3
VOCAB = 40


@dataclass
class SmallModel:
    model: nn.Module
    inputs: tuple  # forward's positional arguments
    out_shape: tuple  # what forward returns for them
    kwargs: dict  # the overrides it was built with


def _vision(info, overrides: dict):
    """Images (B, C, S, S) -> logits (B, num_classes); transformers one block, 32 wide."""
    size, chans = 8, 2
    kw = dict(num_classes=NUM_CLASSES, in_chans=chans, img_size=size)
    if info.family == "vit":
        kw.update(patch_size=4, dim=32, depth=1, num_heads=2, drop_path_rate=0.1)
    elif info.family == "hybrid":
        kw.update(dim=32, depth=1, num_heads=2)
    # (CNN baselines cannot be narrowed by overrides; the 8 px input keeps them fast.)
    kw.update(overrides)
    return kw, (torch.randn(B, chans, size, size),), (B, kw["num_classes"])


def _text(info, overrides: dict):
    """Token ids -> per-token vocabulary logits (LMs, seq2seq) for one 32-wide block."""
    kw = dict(vocab_size=VOCAB, max_len=16, dim=32, depth=1, num_heads=2)
    ids = torch.randint(0, VOCAB, (B, 8))
    if info.task == "causal_lm":
        return {**kw, **overrides}, (ids,), (B, 8, VOCAB)
    if info.task == "masked_lm":
        # No [CLS] pooler: the MLM output does not use it (it serves the classifier head).
        kw.update(pooler=False, **overrides)
        return kw, (ids,), (B, 8, VOCAB)
    if info.task == "seq2seq":
        tgt = torch.randint(0, VOCAB, (B, 5))
        return {**kw, **overrides}, (ids, tgt), (B, 5, VOCAB)
    raise AssertionError(f"no small-input recipe for text task {info.task!r} ({info.name})")


def _rnn(info, overrides: dict):
    """Token ids -> class logits (B, num_classes), read at the last token."""
    kw = dict(vocab_size=VOCAB, dim=16, hidden_dim=16, num_classes=NUM_CLASSES, pool="last")
    kw.update(overrides)
    return kw, (torch.randint(0, VOCAB, (B, 8)),), (B, kw["num_classes"])


def _generation(info, overrides: dict):
    """Noisy images (B, 2, 8, 8), times (B,), class ids (B,) -> a prediction of the images'
    shape (DiT: 2 px patches, one 32-wide block; U-Net: widths 8/16)."""
    kw = dict(img_size=8, in_chans=2, num_classes=NUM_CLASSES)
    if info.family == "dit":
        kw.update(patch_size=2, dim=32, depth=1, num_heads=2)
    elif info.family == "unet":
        kw.update(channels=(8, 16), num_heads=2)
    kw.update(overrides)
    x = torch.randn(B, kw["in_chans"], 8, 8)
    return kw, (x, torch.rand(B), torch.randint(0, NUM_CLASSES, (B,))), tuple(x.shape)


class _PairLogits(nn.Module):
    """A dual encoder's (image_features, text_features, logit_scale) as one (B, B) tensor of
    image-to-text logits, so the contract test can check and backpropagate it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images, ids):
        image_features, text_features, scale = self.model(images, ids)
        return scale * image_features @ text_features.T


def _vision_language(info, overrides: dict):
    """Images (B, 2, 8, 8) + token ids (B, 6): captioners -> per-token logits (B, 6, VOCAB);
    dual encoders -> (B, B) image-text logits (through _PairLogits)."""
    kw = dict(img_size=8, patch_size=4, in_chans=2, dim=32, depth=1, num_heads=2,
              vocab_size=VOCAB, max_len=16, text_dim=32, text_depth=1, text_heads=2)
    if info.family == "clip":
        kw.update(embed_dim=16)
    kw.update(overrides)
    inputs = (torch.randn(B, kw["in_chans"], 8, 8), torch.randint(0, VOCAB, (B, 6)))
    if info.family == "clip":
        return kw, inputs, (B, B), _PairLogits
    return kw, inputs, (B, 6, kw["vocab_size"])


BUILDERS = {"vit": _vision, "cnn": _vision, "hybrid": _vision, "text": _text, "rnn": _rnn,
            "captioner": _vision_language, "clip": _vision_language,
            "dit": _generation, "unet": _generation}


def build_small(name: str, **overrides) -> SmallModel:
    info = model_info(name)
    if info.family not in BUILDERS:
        raise AssertionError(f"no small-input builder for family {info.family!r} ({name}); "
                             f"add one to tests/conftest.py")
    # A builder may add a wrapper for models whose forward returns more than one tensor.
    kw, inputs, out_shape, *wrap = BUILDERS[info.family](info, overrides)
    model = create_model(name, **kw)
    return SmallModel(wrap[0](model) if wrap else model, inputs, out_shape, kw)


@pytest.fixture
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_model():
    """small_model(name, **overrides) -> SmallModel(model, inputs, out_shape), seeded."""
    def make(name: str, **overrides) -> SmallModel:
        torch.manual_seed(0)
        return build_small(name, **overrides)

    return make


@pytest.fixture(scope="module")
def judge_cache(tmp_path_factory):
    """MMTX_CACHE in a temporary folder for the module (judges are cached there)."""
    old = os.environ.get("MMTX_CACHE")
    os.environ["MMTX_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["MMTX_CACHE"])
    if old is None:
        os.environ.pop("MMTX_CACHE", None)
    else:
        os.environ["MMTX_CACHE"] = old
