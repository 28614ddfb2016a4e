"""scaled_dot_product_attention and Attention against PyTorch, timm and hand-computed values."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mmtx.layers import (
    AdditiveAttention,
    Attention,
    KVCache,
    MultiplicativeAttention,
    RotaryEmbedding,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
    use_fused_attn,
)

FAST = settings(max_examples=25, deadline=None)


def _mha_pair(dim=16, heads=4, kdim=None, seed=0):
    """An nn.MultiheadAttention and an mmtx Attention holding the same weights."""
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(dim, heads, bias=True, batch_first=True, kdim=kdim, vdim=kdim)
    for p in mha.parameters():  # MHA zeroes its biases at init; random ones test the copy too
        nn.init.normal_(p, std=0.3)
    ours = Attention(dim, heads, context_dim=kdim, qkv_bias=True)
    with torch.no_grad():
        if kdim is None:
            ours.qkv.weight.copy_(mha.in_proj_weight)  # rows q, k, v in both
            ours.qkv.bias.copy_(mha.in_proj_bias)
        else:
            bq, bk, bv = mha.in_proj_bias.chunk(3)
            ours.q.weight.copy_(mha.q_proj_weight)
            ours.q.bias.copy_(bq)
            ours.kv.weight.copy_(torch.cat([mha.k_proj_weight, mha.v_proj_weight]))
            ours.kv.bias.copy_(torch.cat([bk, bv]))
        ours.proj.weight.copy_(mha.out_proj.weight)
        ours.proj.bias.copy_(mha.out_proj.bias)
    return mha.eval(), ours.eval()


@pytest.mark.parametrize("causal", [False, True])
def test_self_attention_matches_multihead_attention(causal):
    mha, ours = _mha_pair()
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 4, 2])
    keep = padding_mask(lengths, 7)  # (B, Lk) True on real tokens
    # MHA's masks mean the opposite: True = may NOT attend.
    attn_mask = ~causal_mask(7) if causal else None
    ref, ref_w = mha(x, x, x, key_padding_mask=~keep, attn_mask=attn_mask, need_weights=True)
    out, w = ours(x, mask=keep[:, None, None, :], causal=causal, return_attn=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), ref_w, atol=1e-6, rtol=1e-5)  # MHA averages heads
    out_fused = ours(x, mask=keep[:, None, None, :], causal=causal)
    torch.testing.assert_close(out_fused, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kdim", [None, 10])
def test_cross_attention_matches_multihead_attention(kdim):
    mha, ours = _mha_pair(kdim=kdim)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 9, kdim or 16)
    ref, ref_w = mha(x, ctx, ctx, need_weights=True)
    out, w = ours(x, context=ctx, return_attn=True)
    assert w.shape == (2, 4, 5, 9)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w.mean(1), ref_w, atol=1e-6, rtol=1e-5)


def test_matches_timm_attention():
    from timm.layers import Attention as TimmAttention

    torch.manual_seed(0)
    ours = Attention(32, 4, qkv_bias=True).eval()
    theirs = TimmAttention(32, 4, qkv_bias=True).eval()
    theirs.load_state_dict(ours.state_dict())  # same names: qkv, proj
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


MASKS = {
    "none": lambda b, h, lq, lk: None,
    "bool": lambda b, h, lq, lk: torch.rand(b, h, lq, lk) > 0.3,
    "bool_dead_rows": lambda b, h, lq, lk: torch.zeros(b, 1, lq, lk, dtype=torch.bool)
    .index_fill_(-1, torch.tensor([0]), True).index_fill_(-2, torch.tensor([lq - 1]), False),
    "float": lambda b, h, lq, lk: torch.randn(b, 1, lq, lk),
    "float_-inf": lambda b, h, lq, lk: torch.zeros(lq, lk).masked_fill(
        torch.rand(lq, lk) > 0.5, float("-inf")),
    "key_padding": lambda b, h, lq, lk: padding_mask(torch.tensor([lk, 1]), lk)[:, None, None],
}


@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("lq,lk", [(6, 6), (3, 8), (1, 5), (5, 3)])
def test_fused_and_math_paths_agree(mask_kind, causal, lq, lk):
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, lq, 8), torch.randn(2, 3, lk, 8), torch.randn(2, 3, lk, 5)
    mask = MASKS[mask_kind](2, 3, lq, lk)
    fused = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    math_out, w = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal,
                                               return_weights=True)
    assert not fused.isnan().any() and not w.isnan().any()
    torch.testing.assert_close(fused, math_out, atol=1e-5, rtol=1e-5)
    use_fused_attn(False)
    try:  # the global switch sends even a weights-free call down the math path
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask=mask,
                                                                causal=causal), math_out)
    finally:
        use_fused_attn(True)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_attention_dropout_drops_weights_at_rate_p_and_rescales_the_rest(p):
    # With v = identity the output IS the dropped-out weight matrix: every entry is either 0 or
    # the softmax weight / (1 - p), and about a fraction p of them are 0.
    torch.manual_seed(0)
    q, k = torch.randn(8, 4, 32, 16), torch.randn(8, 4, 32, 16)
    v = torch.eye(32).expand(8, 4, 32, 32)
    weights = (q @ k.transpose(-2, -1) / 4.0).softmax(-1)
    out = scaled_dot_product_attention(q, k, v, dropout_p=p)
    kept = out != 0
    torch.testing.assert_close(out[kept], weights[kept] / (1 - p))
    assert abs((~kept).float().mean().item() - p) < 0.01  # 32k entries: std of the rate 0.003
    assert out.shape == (8, 4, 32, 32)


def test_attention_dropout_is_unbiased_and_keeps_masked_rows_zero():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 3)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False  # query 1 sees nothing: zero output, dropout or not
    exact = scaled_dot_product_attention(q, k, v, mask=mask)
    draws = torch.stack([scaled_dot_product_attention(q, k, v, mask=mask, dropout_p=0.3)
                         for _ in range(4000)])
    assert (draws[:, :, :, 1] == 0).all()
    torch.testing.assert_close(draws.mean(0), exact, atol=0.05, rtol=0)


def test_causal_is_bottom_right_aligned():
    # 2 new queries over 5 keys (3 cached): query 0 is position 3, it sees keys 0..3.
    q, k, v = torch.randn(1, 2, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    _, w = scaled_dot_product_attention(q, k, v, causal=True, return_weights=True)
    assert (w[0, 0, 4] == 0) and (w[0, 0, :4] > 0).all() and (w[0, 1] > 0).all()


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    torch.manual_seed(0)
    q = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    fn = lambda q, k, v: scaled_dot_product_attention(  # noqa: E731
        q, k, v, mask=mask, causal=True, return_weights=not fused)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_attention_module_gradcheck_float64():
    torch.manual_seed(0)
    attn = Attention(8, 2, num_kv_heads=1, qkv_bias=True, qk_norm=True).double()
    x = torch.randn(2, 4, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: attn(x, causal=True), (x,))


def test_worked_example_by_hand():
    """The study material's example; the material prints wrong numbers, these are the true ones.

    q = [0.1, 0.2], d_k = 2:
      scores  q.k1 = 0.1*0.3 + 0.2*0.4 = 0.11; q.k2 = 0.01 + 0.04 = 0.05; q.k3 = 0.05 + 0.12 = 0.17
      scaled  / sqrt(2) = 1.41421356: 0.0777817, 0.0353553, 0.1202082
      exp     1.0808867, 1.0359878, 1.1277316; sum 3.2446061
      weights 1.0808867/3.2446061 = 0.3331334, 0.3192954, 0.3475712 (sum 1)
      output  0.3331334*0.7 + 0.3192954*0.9 + 0.3475712*1.1 = 0.9028876; the second column of the
              values is the first + 0.1 and the weights sum to 1, so it is 1.0028876.
    """
    q = torch.tensor([[0.1, 0.2]], dtype=torch.float64)
    k = torch.tensor([[0.3, 0.4], [0.1, 0.2], [0.5, 0.6]], dtype=torch.float64)
    v = torch.tensor([[0.7, 0.8], [0.9, 1.0], [1.1, 1.2]], dtype=torch.float64)
    torch.testing.assert_close(q @ k.T, torch.tensor([[0.11, 0.05, 0.17]], dtype=torch.float64))
    out, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    expected_w = torch.tensor([[0.3331334, 0.3192954, 0.3475712]], dtype=torch.float64)
    torch.testing.assert_close(w, expected_w, atol=1e-7, rtol=0)
    torch.testing.assert_close(out, torch.tensor([[0.9028876, 1.0028876]], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), out)


# ---- properties ----

shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 7), st.integers(1, 7))


@FAST
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_rows_sum_to_one_and_masked_keys_get_zero(shape, seed):
    b, h, lq, lk = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, 4, generator=g) for n in (lq, lk, lk))
    mask = torch.rand(b, 1, lq, lk, generator=g) > 0.4
    out, w = scaled_dot_product_attention(q, k, v, mask=mask, return_weights=True)
    live = mask.any(-1).expand(b, h, lq)
    torch.testing.assert_close(w.sum(-1)[live], torch.ones(int(live.sum())))
    assert (w.masked_select(~mask) == 0).all()
    # A fully masked row: zero weights, zero output (documented), never NaN.
    assert (w[~live] == 0).all() and (out[~live] == 0).all() and not out.isnan().any()


@FAST
@given(length=st.integers(2, 8), pos=st.integers(0, 6), seed=st.integers(0, 2**16))
def test_causal_output_ignores_later_tokens(length, pos, seed):
    pos = min(pos, length - 2)
    torch.manual_seed(seed)
    attn = Attention(8, 2).eval()
    x = torch.randn(1, length, 8)
    y = x.clone()
    y[:, pos + 1:] = torch.randn(1, length - pos - 1, 8)
    a, b = attn(x, causal=True), attn(y, causal=True)
    torch.testing.assert_close(a[:, :pos + 1], b[:, :pos + 1])
    assert not torch.allclose(a[:, pos + 1:], b[:, pos + 1:])


@FAST
@given(length=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_self_attention_is_permutation_equivariant(length, seed):
    torch.manual_seed(seed)
    attn = Attention(8, 2).eval()
    x = torch.randn(2, length, 8)
    perm = torch.randperm(length)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm], atol=1e-6, rtol=1e-5)


# ---- decoding, GQA ----

@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_kv_cache_decoding_equals_full_causal_forward(num_kv_heads):
    torch.manual_seed(0)
    attn = Attention(16, 4, num_kv_heads=num_kv_heads).eval()
    rope = RotaryEmbedding(4)
    x = torch.randn(2, 9, 16)
    full = attn(x, causal=True, rope=rope)
    cache = KVCache()
    with torch.no_grad():
        steps = [attn(x[:, :3], causal=True, rope=rope, cache=cache)]  # a 3-token prompt
        steps += [attn(x[:, t:t + 1], causal=True, rope=rope, cache=cache) for t in range(3, 9)]
    assert cache.length == 9
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_grows_and_keeps_values():
    cache = KVCache()
    ks = [torch.randn(1, 2, 5, 3) for _ in range(10)]  # 50 positions: past the first capacity
    for k in ks:
        keys, values = cache.update(k, -k)
    torch.testing.assert_close(keys, torch.cat(ks, 2))
    torch.testing.assert_close(values, -torch.cat(ks, 2))
    cache.reorder(torch.tensor([0, 0]))
    assert cache.update(ks[0][:1].expand(2, -1, -1, -1), ks[0].expand(2, -1, -1, -1))[0].shape \
        == (2, 2, 55, 3)


def test_kv_cache_under_autograd_keeps_backward_valid():
    attn = Attention(8, 2)
    cache, x = KVCache(), torch.randn(1, 4, 8)
    out = torch.cat([attn(x[:, t:t + 1], causal=True, cache=cache) for t in range(4)], 1)
    out.sum().backward()  # an in-place cache write would fail here
    torch.testing.assert_close(out, attn(x, causal=True), atol=1e-5, rtol=1e-5)


def test_gqa_with_all_kv_heads_is_multi_head_attention():
    torch.manual_seed(0)
    mha = Attention(16, 4).eval()
    gqa = Attention(16, 4, num_kv_heads=4).eval()
    gqa.load_state_dict(mha.state_dict())
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(gqa(x, causal=True), mha(x, causal=True))


def test_gqa_matches_torch_enable_gqa():
    torch.manual_seed(0)
    attn = Attention(16, 4, num_kv_heads=2).eval()
    x = torch.randn(2, 6, 16)
    q, k, v = attn.qkv(x).split([16, 8, 8], -1)
    q = q.view(2, 6, 4, 4).transpose(1, 2)  # (B, H, L, D)
    k, v = (t.view(2, 6, 2, 4).transpose(1, 2) for t in (k, v))  # (B, Hkv, L, D)
    ref = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(attn(x), ref, atol=1e-6, rtol=1e-5)


# ---- classic attentions ----

def test_additive_attention_by_hand():
    torch.manual_seed(0)
    att = AdditiveAttention(3, 5, 4)
    q, keys, values = torch.randn(2, 3), torch.randn(2, 6, 5), torch.randn(2, 6, 7)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    ctx, w = att(q, keys, values, mask=mask)
    for b in range(2):
        scores = torch.stack([att.v.weight[0] @ torch.tanh(att.w_q.weight @ q[b]
                              + att.w_k.weight @ keys[b, j] + att.w_k.bias) for j in range(6)])
        scores[~mask[b]] = -math.inf
        torch.testing.assert_close(w[b], scores.softmax(0))
        torch.testing.assert_close(ctx[b], w[b] @ values[b])
    assert ctx.shape == (2, 7) and (w[1, 4:] == 0).all()


@pytest.mark.parametrize("mode", ["dot", "general", "scaled"])
def test_multiplicative_attention_modes(mode):
    torch.manual_seed(0)
    kd = 6 if mode == "general" else 4
    att = MultiplicativeAttention(4, kd, mode=mode)
    q, keys = torch.randn(2, 3, 4), torch.randn(2, 5, kd)
    ctx, w = att(q, keys)
    k = keys @ att.w.weight.T if mode == "general" else keys  # (B, Lk, 4)
    scores = q @ k.transpose(1, 2) / (2.0 if mode == "scaled" else 1.0)  # sqrt(4) = 2
    torch.testing.assert_close(w, scores.softmax(-1))
    torch.testing.assert_close(ctx, w @ keys)  # values default to the keys


def test_classic_fully_masked_query_gives_zeros():
    att = AdditiveAttention(2, 2, 3)
    ctx, w = att(torch.randn(1, 2), torch.randn(1, 3, 2), mask=torch.zeros(1, 3, dtype=torch.bool))
    assert (ctx == 0).all() and (w == 0).all()


# ---- bad input ----

@pytest.mark.parametrize("call,words", [
    (lambda: Attention(10, 3), ["dim", "num_heads", "10", "3"]),
    (lambda: Attention(8, 4, num_kv_heads=3), ["num_kv_heads", "3"]),
    (lambda: Attention(8, 2)(torch.randn(1, 3, 6)), ["x", "(1, 3, 6)"]),
    (lambda: Attention(8, 2)(torch.randn(1, 3, 8), context=torch.randn(1, 2, 5)),
     ["context", "(1, 2, 5)"]),
    (lambda: Attention(8, 2)(torch.randn(1, 3, 8), mask=torch.ones(4, 4, dtype=torch.bool)),
     ["mask", "(4, 4)", "(1, 2, 3, 3)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 5), torch.randn(3, 5)),
     ["q", "k", "(2, 4)", "(3, 5)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 4), torch.randn(2, 4)),
     ["v", "(3, 4)", "(2, 4)"]),
    (lambda: scaled_dot_product_attention(torch.randn(2, 4), torch.randn(3, 4), torch.randn(3, 4),
                                          mask=torch.ones(2, 3, dtype=torch.long)),
     ["mask", "torch.int64"]),
    (lambda: MultiplicativeAttention(3, 4, mode="dot"), ["query_dim", "key_dim", "general"]),
    (lambda: MultiplicativeAttention(3, 4, mode="bilinear"), ["mode", "bilinear"]),
    (lambda: AdditiveAttention(3, 4, 5)(torch.randn(2, 3), torch.randn(2, 6, 5)),
     ["keys", "(2, 6, 5)"]),
    (lambda: AdditiveAttention(3, 4, 5)(torch.randn(2, 3), torch.randn(2, 6, 4),
                                        mask=torch.ones(2, 5, dtype=torch.bool)),
     ["mask", "(2, 5)"]),
])
def test_bad_input_names_argument_and_shapes(call, words):
    with pytest.raises(ValueError) as err:
        call()
    for word in words:
        assert word in str(err.value), (word, str(err.value))
