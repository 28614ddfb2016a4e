"""Fixtures shared by several test files.

`single_thread`: one torch thread for a test. Test models are tiny, and on a shared 2-core
machine thread sync costs far more than the math (use it with
`pytestmark = pytest.mark.usefixtures("single_thread")`).

`small_model(name, **overrides)` builds any registered model at test size, with an input batch
and the output shape to expect: its family's example recipe (`mmtx.models.examples`), which
each family module registers next to its factories.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from mmtx.models.examples import model_example

B = 2  # batch size of every small input


@dataclass
class SmallModel:
    model: nn.Module
    inputs: tuple  # forward's positional arguments
    out_shape: tuple  # what forward returns for them
    kwargs: dict  # the overrides it was built with


def build_small(name: str, **overrides) -> SmallModel:
    """The registered model at test size, from its family's example recipe
    (`mmtx.models.examples`)."""
    ex = model_example(name, batch=B, **overrides)
    return SmallModel(ex.build(name), ex.inputs, ex.out_shape, ex.overrides)


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
