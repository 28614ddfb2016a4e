"""The theoretical receptive field of a CNN, from its layer stack.

Walking the convolutions and pools in the order they are registered (the order a plain stack
runs them), each layer of kernel k, stride s and dilation d widens the field by (d(k-1)) times
the jump (the input pixels between neighbouring units of its input), and multiplies the jump by
s (Araujo et al. 2019, "Computing receptive fields of convolutional neural networks"):

    rf_out = rf_in + d * (k - 1) * jump_in,   jump_out = jump_in * s,   rf = jump = 1 at the input

Global pools (adaptive pools, a mean over the map) are not counted: they average units without
widening what any one unit sees, and an average of features that each saw one object cannot tell
whether two objects are alike. Branches beside the main path (ResNet's `downsample` shortcut)
are skipped by name; they never see more than the path they bypass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
SKIP = ("downsample", "shortcut")


@dataclass(frozen=True)
class RFLayer:
    """One layer of the walk: its name and geometry, and the field and jump after it."""

    name: str
    kernel: int
    stride: int
    dilation: int
    rf: int  # pixels of the input one unit of this layer's output sees (one side)
    jump: int  # input pixels between neighbouring units of this layer's output


def _first(v) -> int:
    """A kernel/stride/dilation as one int (square kernels; the first side otherwise)."""
    return int(v[0] if isinstance(v, (tuple, list)) else v)


def receptive_field_layers(model: nn.Module, skip=SKIP) -> list[RFLayer]:
    """The walk over `model`'s convolutions and pools in registration order, one RFLayer each."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    rf, jump, layers = 1, 1, []
    for name, m in model.named_modules():
        if any(part in skip for part in name.split(".")):
            continue
        if isinstance(m, _CONVS):
            k, s, d = _first(m.kernel_size), _first(m.stride), _first(m.dilation)
        elif isinstance(m, _POOLS):
            k, s = _first(m.kernel_size), _first(m.stride if m.stride is not None else
                                                  m.kernel_size)
            d = _first(getattr(m, "dilation", 1))
        else:
            continue
        rf += d * (k - 1) * jump
        jump *= s
        layers.append(RFLayer(name, k, s, d, rf, jump))
    return layers


def receptive_field(model: nn.Module, skip=SKIP) -> int:
    """Theoretical receptive field in pixels (one side) of the last conv/pool layer's units.

    1 for a model without convolutions or pools (each output sees one pixel, or, for a model
    that mixes all positions otherwise, the walk has nothing to say)."""
    layers = receptive_field_layers(model, skip)
    return layers[-1].rf if layers else 1


def sees_whole_image(rf: int, image_size: int) -> bool:
    """Whether every unit of the last map sees every pixel: a unit at one edge reaches the far
    edge only when rf >= 2 * side - 1 (a field centred on a unit reaches rf // 2 each way)."""
    return rf >= 2 * int(image_size) - 1
