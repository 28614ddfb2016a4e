"""Fixtures shared by several test files.

`single_thread`: one torch thread for a test. Test models are tiny, and on a shared 2-core
machine thread sync costs far more than the math (use it with
`pytestmark = pytest.mark.usefixtures("single_thread")`).

`small_model(name, **overrides)` builds any registered model at test size, with an input batch
and the output shape to expect. The recipe is chosen by the model's family and task from the
registry (`model_info`), never by its name: a new family adds one builder here.
"""

from __future__ import annotations

from dataclasses import dataclass

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


BUILDERS = {"vit": _vision, "cnn": _vision, "hybrid": _vision, "text": _text, "rnn": _rnn}


def build_small(name: str, **overrides) -> SmallModel:
    info = model_info(name)
    if info.family not in BUILDERS:
        raise AssertionError(f"no small-input builder for family {info.family!r} ({name}); "
                             f"add one to tests/conftest.py")
    kw, inputs, out_shape = BUILDERS[info.family](info, overrides)
    return SmallModel(create_model(name, **kw), inputs, out_shape)


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
