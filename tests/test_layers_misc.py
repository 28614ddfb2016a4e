"""Positions, patches, masks and the block stack of mmtx.layers."""

import math

import pytest
import torch

from mmtx.layers import (
    Attention,
    Decoder,
    Encoder,
    KVCache,
    LearnedPositionEmbedding,
    PatchEmbed,
    RotaryEmbedding,
    causal_mask,
    global_local_mask,
    padding_mask,
    patchify,
    sincos_2d_encoding,
    sinusoidal_encoding,
    sliding_window_mask,
    unpatchify,
)

# ---- rotary ----


def _scores(rope, q_vec, k_vec, n):
    """Scores between the same q and k vector placed at every one of n positions."""
    q = q_vec.expand(1, 1, n, -1)
    k = k_vec.expand(1, 1, n, -1)
    rq, rk = rope(q, k)
    return (rq @ rk.transpose(-1, -2))[0, 0]  # (n, n)


def test_rotary_1d_scores_depend_only_on_offset():
    torch.manual_seed(0)
    s = _scores(RotaryEmbedding(8), torch.randn(8), torch.randn(8), 12)
    for d in range(-11, 12):  # every diagonal i - j = d is constant
        diag = torch.diagonal(s, offset=d)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(torch.diagonal(s, 0)[0], torch.diagonal(s, 3)[0])


def test_rotary_offset_continues_positions():
    rope = RotaryEmbedding(8)
    x = torch.randn(1, 2, 6, 8)
    full = rope.rotate(x)
    torch.testing.assert_close(rope.rotate(x[:, :, 4:], offset=4), full[:, :, 4:])
    torch.testing.assert_close(full[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_rotary_2d_scores_depend_only_on_grid_offset():
    torch.manual_seed(0)
    h, w = 3, 4
    rope = RotaryEmbedding(8, grid=(h, w))
    s = _scores(rope, torch.randn(8), torch.randn(8), h * w)
    rc = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij"), -1)
    rc = rc.reshape(-1, 2)  # (h*w, 2) row, col in patchify order
    by_offset = {}
    for i in range(h * w):
        for j in range(h * w):
            by_offset.setdefault(tuple((rc[i] - rc[j]).tolist()), []).append(s[i, j])
    for values in by_offset.values():
        torch.testing.assert_close(torch.stack(values), values[0].expand(len(values)),
                                   atol=1e-5, rtol=1e-5)
    assert len({round(v[0].item(), 4) for v in by_offset.values()}) > len(by_offset) // 2


def test_rotary_2d_leaves_prefix_tokens_alone():
    rope = RotaryEmbedding(8, grid=(2, 2), num_prefix=1)
    x = torch.randn(1, 1, 5, 8)
    out = rope.rotate(x)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])
    torch.testing.assert_close(out[:, :, 1:], RotaryEmbedding(8, grid=(2, 2)).rotate(x[:, :, 1:]))


# ---- patches ----

def test_patchify_unpatchify_round_trip_and_layout():
    images = torch.randn(2, 3, 8, 12)
    tokens = patchify(images, 4)
    assert tokens.shape == (2, 6, 48)
    torch.testing.assert_close(unpatchify(tokens, 4, 8, 12), images)
    # token 4 = patch row 1, col 1; its pixels are (py, px, c) in order
    torch.testing.assert_close(tokens[0, 4].view(4, 4, 3), images[0, :, 4:8, 4:8].permute(1, 2, 0))
    assert patchify(torch.randn(1, 1, 6, 4), (3, 2)).shape == (1, 4, 6)


def test_patch_embed_is_a_linear_map_of_patchify():
    torch.manual_seed(0)
    pe = PatchEmbed(img_size=8, patch_size=4, in_chans=3, dim=5)
    images = torch.randn(2, 3, 8, 8)
    w = pe.proj.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (dim, py*px*c), patchify's order
    torch.testing.assert_close(pe(images), patchify(images, 4) @ w.T + pe.proj.bias,
                               atol=1e-5, rtol=1e-5)
    assert pe.num_patches == 4 and pe.grid_size == (2, 2)


# ---- position tables ----

def test_sinusoidal_values_by_hand():
    pe = sinusoidal_encoding(4, 6)
    # PE[p, 2i] = sin(p / 10000^(2i/6)), PE[p, 2i+1] = cos(same)
    assert pe[0].tolist() == [0, 1, 0, 1, 0, 1]
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))
    assert pe[1, 1].item() == pytest.approx(math.cos(1.0))
    assert pe[3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 6)))
    assert pe[2, 5].item() == pytest.approx(math.cos(2 / 10000 ** (4 / 6)))


def test_sincos_2d_rows_then_columns():
    t = sincos_2d_encoding(2, 3, 8)
    assert t.shape == (6, 8)
    torch.testing.assert_close(t[4, :4], sinusoidal_encoding(2, 4)[1])  # row 1
    torch.testing.assert_close(t[4, 4:], sinusoidal_encoding(3, 4)[1])  # column 1


def test_learned_position_grid_resize():
    torch.manual_seed(0)
    pos = LearnedPositionEmbedding(None, 4, grid=(2, 3), num_prefix=1)
    x = torch.zeros(1, 7, 4)
    torch.testing.assert_close(pos(x), pos.weight)  # same grid: the table itself
    out = pos(torch.zeros(1, 1 + 16, 4), grid=(4, 4))
    assert out.shape == (1, 17, 4)
    torch.testing.assert_close(out[:, 0], pos.weight[:, 0])  # the class token is not resized
    from timm.layers import resample_abs_pos_embed  # the reference: timm's resampling

    ref = resample_abs_pos_embed(pos.weight, new_size=(4, 4), old_size=(2, 3),
                                 num_prefix_tokens=1)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="sequence length 8"):
        pos(torch.zeros(1, 8, 4))


# ---- masks ----

def test_masks_by_hand():
    assert causal_mask(2, 3).tolist() == [[True, True, False], [True, True, True]]
    assert padding_mask(torch.tensor([1, 3]), 3).tolist() == [[True, False, False],
                                                              [True, True, True]]
    assert sliding_window_mask(4, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1],
                                                  [0, 0, 1, 1]]
    assert sliding_window_mask(3, 2, causal=True).tolist() == [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    gl = global_local_mask(5, 1, [2])
    assert gl[2].all() and gl[:, 2].all() and gl.sum() == 5 + 4 + 4


# ---- the block stack ----

@pytest.mark.parametrize("cross", [False, True])
def test_decoder_cache_decoding_equals_full_forward(cross):
    torch.manual_seed(0)
    dec = Decoder(2, 16, 4, cross_attention=cross, num_kv_heads=2).eval()
    rope = RotaryEmbedding(4)
    x, ctx = torch.randn(2, 7, 16), torch.randn(2, 5, 16) if cross else None
    full = dec(x, context=ctx, rope=rope)
    cache = dec.new_cache()
    assert len(cache) == 2
    with torch.no_grad():
        steps = [dec(x[:, :2], context=ctx, rope=rope, cache=cache)]
        steps += [dec(x[:, t:t + 1], context=ctx, rope=rope, cache=cache) for t in range(2, 7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("context_dim", [None, 24])
def test_cross_attention_keys_and_values_are_projected_once_per_cache(context_dim):
    torch.manual_seed(0)
    attn = Attention(16, 4, context_dim=context_dim).eval()
    x, ctx = torch.randn(3, 4, 16), torch.randn(3, 5, context_dim or 16)
    cache = KVCache()
    with torch.no_grad():
        first = attn(x[:, :1], context=ctx, cache=cache)
        # later steps read the cached keys and values: the context passed is not projected again
        later = attn(x[:, 1:], context=torch.zeros_like(ctx), cache=cache)
    torch.testing.assert_close(torch.cat([first, later], 1), attn(x, context=ctx))
    assert cache.length == 0 and cache.context[0].shape == (3, 4, 5, 4)
    cache.reorder(torch.tensor([2, 2, 0]))  # beam search keeps some rows
    with torch.no_grad():
        torch.testing.assert_close(attn(x[[2, 2, 0], 1:], context=torch.zeros_like(ctx),
                                        cache=cache),
                                   attn(x[[2, 2, 0], 1:], context=ctx[[2, 2, 0]]))
    with pytest.raises(ValueError, match="rope is for self-attention"):
        attn(x, context=ctx, rope=RotaryEmbedding(4))


def test_stack_returns_attention_maps_and_hidden_states():
    enc = Encoder(3, 16, 4, norm="rms", mlp="swiglu").eval()
    x = torch.randn(2, 5, 16)
    out, inter = enc(x, return_attn=True, return_hidden=True)
    torch.testing.assert_close(out, enc(x))
    assert len(inter.self_attn) == 3 and inter.self_attn[0].shape == (2, 4, 5, 5)
    assert len(inter.hidden) == 4 and inter.hidden[0] is x
    torch.testing.assert_close(inter.self_attn[1].sum(-1), torch.ones(2, 4, 5))
    dec = Decoder(1, 16, 4, cross_attention=True).eval()
    _, inter = dec(x, context=torch.randn(2, 3, 16), return_attn=True)
    assert inter.cross_attn[0].shape == (2, 4, 5, 3)
    assert (inter.self_attn[0].triu(1) == 0).all()  # causal


def test_block_bad_choices():
    with pytest.raises(ValueError, match="norm must be one of"):
        Encoder(1, 8, 2, norm="batch")
    with pytest.raises(ValueError, match="context must be given"):
        Decoder(1, 8, 2, cross_attention=True)(torch.randn(1, 2, 8))


def test_demo_prints_worked_example_and_saves_png(tmp_path, capsys):
    from mmtx.viz.demo import main, sentence_maps

    path = main(tmp_path / "demo.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "[0.3331, 0.3193, 0.3476]" in text and "[0.9029, 1.0029]" in text
    both, causal = sentence_maps()
    torch.testing.assert_close(both.sum(-1), torch.ones(len(both)))
    assert (causal.triu(1) == 0).all()
