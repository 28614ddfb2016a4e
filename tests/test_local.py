"""local_attention against dense attention under the matching mask."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtx.layers import (
    global_local_mask,
    local_attention,
    scaled_dot_product_attention,
    sliding_window_mask,
)


def _dense(q, k, v, window, causal, global_positions):
    L = q.shape[-2]
    mask = sliding_window_mask(L, window, causal=causal) if global_positions is None \
        else global_local_mask(L, window, global_positions, causal=causal)
    return scaled_dot_product_attention(q, k, v, mask=mask)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 40), window=st.integers(1, 45), causal=st.booleans(),
       n_global=st.integers(0, 3), seed=st.integers(0, 2**16))
def test_local_equals_dense_under_mask(length, window, causal, n_global, seed):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, 3, length, 8, generator=g), torch.randn(2, 3, length, 8, generator=g)
    v = torch.randn(2, 3, length, 5, generator=g)
    pos = torch.randint(0, length, (n_global,), generator=g).tolist() if n_global else None
    out = local_attention(q, k, v, window, causal=causal, global_positions=pos)
    torch.testing.assert_close(out, _dense(q, k, v, window, causal, pos), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pos", [None, [0, 13]])
def test_local_gradients_equal_dense(causal, pos):
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 23, 4, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    out = local_attention(q, k, v, 5, causal=causal, global_positions=pos)
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    ref = _dense(q, k, v, 5, causal, pos)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    small_pos = pos and [0, 7]
    assert torch.autograd.gradcheck(
        lambda q, k, v: local_attention(q, k, v, 3, causal=causal, global_positions=small_pos),
        (q[..., :11, :].detach().requires_grad_(), k[..., :11, :].detach().requires_grad_(),
         v[..., :11, :].detach().requires_grad_()))


def test_window_one_is_attention_to_oneself():
    v = torch.randn(2, 9, 3)
    torch.testing.assert_close(local_attention(torch.randn(2, 9, 4), torch.randn(2, 9, 4), v, 1),
                               v)


def test_memory_is_linear_in_length():
    """No (L, L) tensor: the largest allocation stays far below one dense score matrix."""
    from torch.profiler import ProfilerActivity, profile

    L, window = 2048, 16
    q = k = v = torch.randn(1, 1, L, 8)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        local_attention(q, k, v, window, global_positions=[0, 5])
    sizes = [e.nbytes() for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert sizes and max(sizes) < L * L  # a dense bool mask alone would be L * L bytes


@pytest.mark.parametrize("call,words", [
    (lambda: local_attention(*(torch.randn(5, 4),) * 3, window=0), ["window", "0"]),
    (lambda: local_attention(*(torch.randn(5, 4),) * 3, window=-2), ["window", "-2"]),
    (lambda: local_attention(torch.randn(5, 4), torch.randn(6, 4), torch.randn(6, 4), 2),
     ["q", "k", "(5, 4)", "(6, 4)"]),
    (lambda: local_attention(torch.randn(5, 4), torch.randn(5, 4), torch.randn(4, 4), 2),
     ["v", "(4, 4)"]),
    (lambda: local_attention(*(torch.randn(5, 4),) * 3, 2, global_positions=[7]),
     ["global_positions", "[0, 5)", "[7]"]),
    (lambda: sliding_window_mask(5, 0), ["window", "0"]),
])
def test_bad_input(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize("causal", [False, True])
def test_attention_window_option_matches_masked_attention(causal):
    from mmtx.layers import Attention, Decoder, RotaryEmbedding

    torch.manual_seed(0)
    dense = Attention(16, 4, num_kv_heads=2).eval()
    local = Attention(16, 4, num_kv_heads=2, window=3).eval()
    local.load_state_dict(dense.state_dict())
    x = torch.randn(2, 11, 16)
    ref = dense(x, mask=sliding_window_mask(11, 3, causal=causal), causal=causal)
    torch.testing.assert_close(local(x, causal=causal), ref, atol=1e-5, rtol=1e-5)
    out, w = local(x, causal=causal, return_attn=True)  # the dense path, window as a mask
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert (w[..., ~sliding_window_mask(11, 3, causal=causal)] == 0).all()
    if causal:  # decoding with a cache sees the same window
        dec = Decoder(2, 16, 4, window=3).eval()
        rope = RotaryEmbedding(4)
        full, cache = dec(x, rope=rope), dec.new_cache()
        with torch.no_grad():
            steps = [dec(x[:, t:t + 1], rope=rope, cache=cache) for t in range(11)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="window"):
        Attention(16, 4, window=0)


def test_math_path_switch_gives_the_same_result():
    from mmtx.layers import use_fused_attn

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 30, 8) for _ in range(3))
    fused = local_attention(q, k, v, 4, causal=True, global_positions=[3])
    use_fused_attn(False)
    try:
        explicit = local_attention(q, k, v, 4, causal=True, global_positions=[3])
    finally:
        use_fused_attn(True)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, _dense(q, k, v, 4, True, [3]), atol=1e-5, rtol=1e-5)
