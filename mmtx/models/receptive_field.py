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

Registration order is not always the order a model runs its layers (a U-Net registers its
down-sampling convolutions apart from the stages they follow), and an up-sampling done by a
function (F.interpolate) is no module. Given `example` inputs, the walk follows the forward pass
instead: layers in the order they run, and an up-sampling by u between two layers (seen as a
layer's input map larger than the last layer's output) divides the jump by u. Through a U-Net
this walks its deepest path, stem to output: the widest field any output unit has.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
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


def _geometric(model: nn.Module, skip) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, _CONVS + _POOLS) and not any(p in skip for p in name.split("."))]


def _run_order(model: nn.Module, layers, example) -> list[tuple[str, nn.Module, float]]:
    """(name, module, up-sampling before it) for each call of `layers` in `model(*example)`."""
    calls, hooks = [], []
    for name, m in layers:
        def hook(mod, args, out, name=name):
            calls.append((name, mod, args[0].shape[-1], out.shape[-1]))
        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    order, last = [], None
    for name, m, side_in, side_out in calls:
        order.append((name, m, 1.0 if last is None else side_in / last))
        last = side_out
    return order


def receptive_field_layers(model: nn.Module, skip=SKIP, example=None) -> list[RFLayer]:
    """The walk over `model`'s convolutions and pools, one RFLayer each: in registration order,
    or, given `example` (a tuple of forward arguments), in the order `model(*example)` runs
    them, with up-sampling between them read from their map sizes."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
    found = _geometric(model, skip)
    if example is None:
        order = [(name, m, 1.0) for name, m in found]
    else:
        if not isinstance(example, tuple):
            raise ValueError(f"example: expected a tuple of forward arguments, got "
                             f"{type(example).__name__}")
        order = _run_order(model, found, example)
    rf, jump, layers = 1, 1, []
    for name, m, up in order:
        if up > 1:  # the map grew since the last layer: neighbouring units are closer
            jump = jump / up
            jump = int(jump) if float(jump).is_integer() else jump
        if isinstance(m, _CONVS):
            k, s, d = _first(m.kernel_size), _first(m.stride), _first(m.dilation)
        elif isinstance(m, _POOLS):
            k, s = _first(m.kernel_size), _first(m.stride if m.stride is not None else
                                                  m.kernel_size)
            d = _first(getattr(m, "dilation", 1))
        rf += d * (k - 1) * jump
        jump *= s
        layers.append(RFLayer(name, k, s, d, rf, jump))
    return layers


def receptive_field(model: nn.Module, skip=SKIP, example=None) -> int:
    """Theoretical receptive field in pixels (one side) of the last conv/pool layer's units;
    `example`: walk in the order the forward pass runs (see the module docstring).

    1 for a model without convolutions or pools (each output sees one pixel, or, for a model
    that mixes all positions otherwise, the walk has nothing to say)."""
    layers = receptive_field_layers(model, skip, example)
    return int(layers[-1].rf) if layers else 1


def sees_whole_image(rf: int, image_size: int) -> bool:
    """Whether every unit of the last map sees every pixel: a unit at one edge reaches the far
    edge only when rf >= 2 * side - 1 (a field centred on a unit reaches rf // 2 each way)."""
    return rf >= 2 * int(image_size) - 1
