"""The FLOP counter (`mmtx.models.summary`) counts every attention kernel: torch's counter alone
counts 0 for kernels it has no formula for (PyTorch's CPU flash kernel, nn.MultiheadAttention's
fused inference kernel, a new custom kernel), which would skew every FLOP-matched comparison."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mmtx.models.summary import AttentionFlopCounter, forward_flops, model_summary

pytestmark = pytest.mark.usefixtures("single_thread")


@torch.library.custom_op("mmtx_test::toy_attention", mutates_args=())
def toy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A new attention kernel, opaque to the counter (as a fused or compiled one would be)."""
    return (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1) @ v


@toy_attention.register_fake
def _(q, k, v):
    return q.new_empty(*q.shape[:-1], v.shape[-1])


@torch.library.custom_op("mmtx_test::odd_attention", mutates_args=())
def odd_attention(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.clone()


class Calls(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _plain(fn, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as c:
        fn(*args)
    return c.get_total_flops()


def test_a_new_attention_kernel_counts_its_flops_not_zero():
    H, L, D = 2, 12, 8
    model = Calls(lambda x: toy_attention(x, x, x))
    assert _plain(model, torch.randn(1, H, L, D)) == 0  # torch's counter alone
    # QK^T and AV: 2 * (H L L D) each, a multiply-add being 2 FLOPs
    assert model_summary(model, (H, L, D))["flops"] == 4 * H * L * L * D


def test_the_cpu_flash_kernel_counts_forward_and_backward():
    q, k, v = (torch.randn(2, 3, 10, 4, requires_grad=True) for _ in range(3))
    with AttentionFlopCounter() as c:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    counts = {str(op): n for op, n in c.get_flop_counts()["Global"].items()}
    forward = 4 * 2 * 3 * 10 * 10 * 4
    assert counts["aten._scaled_dot_product_flash_attention_for_cpu"] == forward
    # recompute QK^T, then grad of (scores, v) and of (q, k): five products of that size
    assert counts["aten._scaled_dot_product_flash_attention_for_cpu_backward"] == forward * 5 // 2
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    assert plain.get_total_flops() == 0  # torch's counter alone


def test_multihead_attention_fused_kernel_counts_as_its_unfused_path():
    B, L, E = 2, 6, 16
    mha = nn.MultiheadAttention(E, 4, batch_first=True).eval()
    x = torch.randn(B, L, E)
    fused = Calls(lambda x: mha(x, x, x, need_weights=False)[0])
    assert _plain(fused, x) == 0  # the fused inference kernel: 0 for torch's counter
    hand = 2 * B * E * E * 4 * L + 4 * B * L * L * E  # four projections, QK^T and AV
    assert model_summary(fused, (L, E))["flops"] == hand // B
    with torch.no_grad(), AttentionFlopCounter() as c:
        mha.train()(x, x, x, need_weights=False)  # the unfused path: Linear, SDPA, Linear
    assert c.get_total_flops() == hand


def test_an_attention_kernel_the_counter_cannot_read_is_an_error():
    model = Calls(lambda x: odd_attention(x, 2))
    with pytest.raises(ValueError, match="no FLOP formula for the attention kernel "
                                         "mmtx_test.odd_attention"):
        model_summary(model, (3, 4))


def test_forward_flops_of_a_generator_counts_its_attention(small_model):
    # A generator's forward takes (x, t, y): forward_flops counts it with its attention,
    # which torch's counter alone misses on CPU (the FLOP-matched generation study).
    s = small_model("dit_micro_2")
    model = s.model.train()
    total = forward_flops(model, *s.inputs)
    assert model.training  # mode restored
    plain = _plain(model.eval(), *s.inputs)
    B, (gh, gw) = s.inputs[0].shape[0], model.patch_embed.grid_size
    attention = 4 * B * (gh * gw) ** 2 * model.dim  # one block: QK^T and AV over all heads
    assert total - plain == attention
