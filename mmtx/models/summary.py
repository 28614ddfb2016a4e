"""Parameter and FLOP counts for reports (FLOPs from torch.utils.flop_counter)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
    shape_wrapper,
)

from .registry import create_model

_aten = torch.ops.aten


def _as_4d(shape) -> tuple:
    """(..., L, E) -> (B, H, L, E): torch's SDPA formulas want 4-D; leading dims are batch."""
    if len(shape) == 4:
        return tuple(shape)
    return (math.prod(shape[:-2]), 1, *shape[-2:])


def _qkv_shapes(name: str, shapes) -> list | None:
    if len(shapes) < 3 or not all(isinstance(x, torch.Size) and len(x) >= 2 for x in shapes):
        return None
    return [_as_4d(x) for x in shapes]


def _attention_flop(func_packet):
    """A FLOP formula for an attention kernel torch's counter has none for, read from its
    arguments: forward kernels take (q, k, v, ...), backward ones (grad_out, q, k, v, ...)."""
    name = str(func_packet)
    backward = name.endswith("_backward")

    def formula(*args, out_shape=None, **kwargs):
        shapes = _qkv_shapes(name, list(args[:4] if backward else args[:3]))
        if shapes is None or (backward and len(shapes) < 4):
            raise ValueError(f"model_summary: no FLOP formula for the attention kernel {name} "
                             f"(its arguments do not read as q, k, v); add one to "
                             f"mmtx/models/summary.py so it does not count 0 FLOPs")
        return sdpa_backward_flop_count(*shapes) if backward else sdpa_flop_count(*shapes)

    return shape_wrapper(formula)


def _native_mha_flop(query, key, value, embed_dim, num_heads, *args, out_shape=None, **kw) -> int:
    """nn.MultiheadAttention's fused inference kernel: q, k, v projections, attention, output
    projection; query (B, Lq, E), key and value (B, Lk, E)."""
    b, lq, e = query
    lk = key[1]
    proj = 2 * b * e * e * (2 * lq + 2 * lk)  # q and out over Lq; k and v over Lk
    return proj + 4 * b * lq * lk * e  # QK^T and AV summed over the heads


class AttentionFlopCounter(FlopCounterMode):
    """torch's FLOP counter that counts every attention kernel: torch's own formulas where it has
    them (the CUDA SDPA kernels, flex attention), `nn.MultiheadAttention`'s fused kernel, and any
    other op named "attention" (the CPU flash kernel, other backends' fused kernels, a custom
    op) by the SDPA formula over its (q, k, v) arguments. An attention op the formula cannot
    read raises ValueError: a new kernel never counts 0 FLOPs without a word, which would skew
    every FLOP-matched comparison. A multiply-add counts as 2 FLOPs."""

    def __init__(self):
        super().__init__(display=False,
                         custom_mapping={_aten._native_multi_head_attention: _native_mha_flop})

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet not in self.flop_registry and "attention" in str(func_packet):
            self.flop_registry[func_packet] = _attention_flop(func_packet)
        return super()._count_flops(func_packet, out, args, kwargs)


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# In-place initialisers: on a meta tensor they have no data to fill, only a (slow) decomposition
# to run, so building under `_SkipMetaInit` skips them.
_INIT_METHODS = frozenset({"normal_", "uniform_", "zero_", "fill_", "copy_", "trunc_normal_"})


class _SkipMetaInit(TorchFunctionMode):
    """Turns every torch.nn.init function and in-place initialiser on a meta tensor into a no-op.

    Shapes never depend on init, and a meta tensor holds no data; running the inits would only
    cost time (each is a Python decomposition on meta, about 4x the build of all models).
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if isinstance(target, torch.Tensor) and target.is_meta and (
                getattr(func, "__module__", None) == "torch.nn.init"
                or getattr(func, "__name__", None) in _INIT_METHODS):
            return target
        return func(*args, **kwargs)


def count_model_params(name: str, **overrides) -> int:
    """Parameters of the registered model `name`, counted on the meta device: no weight is
    allocated or initialised, so even DiT-XL counts in milliseconds and no memory."""
    with torch.device("meta"), _SkipMetaInit():
        model = create_model(name, **overrides)
    return count_params(model)


@torch.no_grad()
def forward_flops(model: nn.Module, *args, **kwargs) -> int:
    """FLOPs of one forward `model(*args, **kwargs)` in eval mode, every attention kernel
    counted (`AttentionFlopCounter`); the model's mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with AttentionFlopCounter() as counter:
            model(*args, **kwargs)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def model_summary(model: nn.Module, input_shape=None, *, example_input=None) -> dict:
    """{"params": int, "trainable_params": int, "flops": forward FLOPs per sample}.

    `input_shape` is one sample's shape without the batch dim, e.g. (3, 32, 32) for images;
    token models pass `example_input` (a batch of one) instead. A multiply-add counts as 2 FLOPs.
    """
    info = {"params": count_params(model), "trainable_params": count_params(model, True)}
    if input_shape is None and example_input is None:
        return info
    if example_input is None:
        p = next(model.parameters(), None)
        example_input = torch.randn(1, *input_shape, device=None if p is None else p.device)
    info["flops"] = forward_flops(model, example_input) // example_input.shape[0]
    return info
