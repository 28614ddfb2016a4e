"""Parameter and FLOP counts for reports (FLOPs from torch.utils.flop_counter)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .registry import create_model

_aten = torch.ops.aten


def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# torch's counter knows the CUDA SDPA kernels but not the CPU fused one, so attention would count
# as 0 FLOPs on CPU; count it with the same formula (QK^T and AV: 4 * B*H*Lq*Lk*D).
_EXTRA_FLOPS = {_aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_flop}


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
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS)
    with counter:
        model(example_input)
    model.train(was_training)
    info["flops"] = counter.get_total_flops() // example_input.shape[0]
    return info
