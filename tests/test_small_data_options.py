"""Options for small data sets in the shared layers and the models that use them: Shifted Patch
Tokenization and Locality Self-Attention (Lee et al., 2021), the convolutional stem, and U-ViT's
long skip connections (Bao et al., 2023). Checked against hand-computed values and against the
same computation written out here step by step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmtx
from mmtx.layers import (
    Attention,
    ConvStem,
    Encoder,
    KVCache,
    PatchEmbed,
    diagonal_shifts,
    patchify,
    shifted_patches,
)

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- Shifted Patch Tokenization ----

def test_shifted_patches_by_hand():
    x = torch.arange(1.0, 17.0).reshape(1, 1, 4, 4)  # rows 1-4, 5-8, 9-12, 13-16
    tokens = shifted_patches(x, 2)  # shift 1 pixel; (1, 4 patches, 2*2 pixels * 5 copies)
    assert tokens.shape == (1, 4, 20)
    # top-left patch, pixels (0,0) (0,1) (1,0) (1,1); per pixel: x, then the pixel up-left,
    # up-right, down-left, down-right of it (0 outside the image)
    assert tokens[0, 0].tolist() == [1, 0, 0, 0, 6,
                                     2, 0, 0, 5, 7,
                                     5, 0, 2, 0, 10,
                                     6, 1, 3, 9, 11]
    # bottom-right patch, pixels (2,2) (2,3) (3,2) (3,3)
    assert tokens[0, 3].tolist() == [11, 6, 8, 14, 16,
                                     12, 7, 0, 15, 0,
                                     15, 10, 12, 0, 0,
                                     16, 11, 0, 0, 0]


def test_diagonal_shifts_by_half_a_patch_on_each_axis():
    x = torch.randn(2, 3, 8, 12)
    s = diagonal_shifts(x, (2, 3))  # (B, 5C, H, W)
    assert s.shape == (2, 15, 8, 12)
    pad = F.pad(x, (3, 3, 2, 2))  # pad[i + 2, j + 3] = x[i, j]
    assert torch.equal(s[:, :3], x)
    for n, (dy, dx) in enumerate([(-2, -3), (-2, 3), (2, -3), (2, 3)], 1):
        want = pad[..., 2 + dy:2 + dy + 8, 3 + dx:3 + dx + 12]  # x[i + dy, j + dx]
        assert torch.equal(s[:, 3 * n:3 * n + 3], want), (dy, dx)
    with pytest.raises(ValueError, match="patch_size >= 2"):
        shifted_patches(x, 1)


def test_patch_embed_spt_is_layernorm_then_linear_of_the_shifted_patches():
    torch.manual_seed(0)
    pe = PatchEmbed(8, 2, in_chans=3, dim=16, spt=True)
    nn.init.normal_(pe.norm.weight)
    nn.init.normal_(pe.norm.bias)
    x = torch.randn(2, 3, 8, 8)
    out = pe(x)
    assert out.shape == (2, 16, 16) and pe.num_patches == 16
    flat = shifted_patches(x, 2)  # (2, 16, 60)
    ref = F.linear(F.layer_norm(flat, (60,), pe.norm.weight, pe.norm.bias), pe.proj.weight,
                   pe.proj.bias)
    torch.testing.assert_close(out, ref)
    # the unshifted copy is the first of each pixel's five: the plain patches are in there
    assert torch.equal(flat.view(2, 16, 4, 5, 3)[:, :, :, 0].reshape(2, 16, 12), patchify(x, 2))
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pe.parameters())
    with pytest.raises(ValueError, match="spt=True needs patch_size >= 2"):
        PatchEmbed(8, 1, 3, 16, spt=True)
    with pytest.raises(ValueError, match="must have 3 channels"):
        pe(torch.randn(1, 2, 8, 8))


# ---- Locality Self-Attention ----

def _plain_qkv(attn: Attention) -> None:
    """q = k = v = x and an identity output projection, so outputs can be worked out by hand."""
    d = attn.dim
    with torch.no_grad():
        attn.qkv.weight.copy_(torch.eye(d).repeat(3, 1))
        attn.proj.weight.copy_(torch.eye(d))
        attn.proj.bias.zero_()


def test_lsa_two_tokens_each_reads_only_the_other():
    attn = Attention(4, num_heads=2, lsa=True)
    _plain_qkv(attn)
    x = torch.randn(3, 2, 4)
    # with its own key masked, each token has one key left: softmax weight 1 on it
    torch.testing.assert_close(attn(x), x.flip(1))


def test_lsa_by_hand_three_tokens_learned_scale_per_head():
    attn = Attention(2, num_heads=2, lsa=True)  # head_dim 1: scores are products of numbers
    _plain_qkv(attn)
    assert attn.lsa_scale.tolist() == [1.0, 1.0]  # 1 / sqrt(head_dim): the paper's start
    with torch.no_grad():
        attn.lsa_scale[1] = 0.5
    a, b = [1.0, 2.0, 3.0], [2.0, -1.0, 0.5]  # head 0's and head 1's value of each token
    x = torch.tensor([[[a[i], b[i]] for i in range(3)]])  # (1, 3, 2)
    out, w = attn(x, return_attn=True)

    def by_hand(vals, s, i):  # token i reads the two other tokens: softmax(s * v_i v_j) v_j
        others = [j for j in range(3) if j != i]
        e = [math.exp(s * vals[i] * vals[j]) for j in others]
        return sum(ei * vals[j] for ei, j in zip(e, others)) / sum(e)

    want = [[by_hand(a, 1.0, i), by_hand(b, 0.5, i)] for i in range(3)]
    torch.testing.assert_close(out[0], torch.tensor(want))
    assert torch.all(w.diagonal(dim1=-2, dim2=-1) == 0)  # (1, 2, 3) the masked diagonal
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 2, 3))
    torch.testing.assert_close(attn(x), out)  # the fused kernel path (no weights asked) agrees


def test_lsa_matches_explicit_softmax_with_gqa_mask_and_window():
    torch.manual_seed(0)
    attn = Attention(16, num_heads=4, num_kv_heads=2, lsa=True, window=3)
    with torch.no_grad():
        attn.lsa_scale.copy_(torch.tensor([0.1, 0.5, 1.0, 2.0]))
    x = torch.randn(2, 6, 16)
    keep = torch.rand(2, 1, 1, 6) > 0.3  # a key-padding mask on top
    keep[..., 0] = True
    out = attn(x, mask=keep)
    q, k, v = attn.qkv(x).split([16, 8, 8], -1)
    q = q.view(2, 6, 4, 4).transpose(1, 2)  # (B, H, L, D)
    k = k.view(2, 6, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    v = v.view(2, 6, 2, 4).transpose(1, 2).repeat_interleave(2, 1)
    scores = (q @ k.transpose(-1, -2)) * attn.lsa_scale[:, None, None]  # (B, H, L, L)
    i, j = torch.arange(6)[:, None], torch.arange(6)[None]
    allowed = keep & (i != j) & ((i - j).abs() < 3)
    p = scores.masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
    ref = attn.proj((p @ v).transpose(1, 2).reshape(2, 6, 16))
    torch.testing.assert_close(out, ref)


def test_lsa_scale_learns_and_kv_cache_decoding_matches_the_full_pass():
    torch.manual_seed(0)
    attn = Attention(8, num_heads=2, lsa=True)
    x = torch.randn(2, 5, 8)
    full = attn(x, causal=True)
    # causal + LSA: the first token sees no key at all, and gets a zero output (then the bias)
    torch.testing.assert_close(full[:, 0], attn.proj.bias.expand(2, 8))
    full.square().sum().backward()
    assert attn.lsa_scale.grad is not None and torch.all(attn.lsa_scale.grad != 0)
    with torch.no_grad():
        cache = KVCache()
        steps = [attn(x[:, t:t + 1], causal=True, cache=cache) for t in range(5)]
    torch.testing.assert_close(torch.cat(steps, 1), full.detach())


def test_lsa_is_self_attention_only():
    with pytest.raises(ValueError, match="lsa .* self-attention; got context_dim=8"):
        Attention(16, 2, context_dim=8, lsa=True)
    with pytest.raises(ValueError, match="lsa is for self-attention; got a context"):
        Attention(16, 2, lsa=True)(torch.randn(1, 3, 16), context=torch.randn(1, 4, 16))


# ---- convolutional stem ----

def test_conv_stem_shapes_and_pooling_grid():
    stem = ConvStem(3, 16, 2)
    assert stem(torch.randn(2, 3, 9, 7)).shape == (2, 16, 9, 7)  # stride 1: same size
    assert [type(m) for m in stem] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU]
    pooled = ConvStem(3, 16, 2, hidden=8, pool=True)
    out = pooled(torch.randn(2, 3, 9, 7))
    assert out.shape == (2, 16, *pooled.grid_for(9, 7)) == (2, 16, 3, 2)
    assert pooled[0].out_channels == 8 and pooled[0].bias is None
    with pytest.raises(ValueError, match=r"images must be \(B, 3, H, W\)"):
        stem(torch.randn(2, 4, 8, 8))


# ---- U-ViT long skip connections ----

@pytest.mark.parametrize("depth,pairs", [(1, 0), (2, 0), (3, 1), (4, 1), (6, 2), (7, 3)])
def test_long_skip_count(depth, pairs):
    assert len(Encoder(depth, 8, 2, long_skip=True).skips) == pairs
    assert len(Encoder(depth, 8, 2).skips) == 0


def test_long_skips_start_as_the_plain_stack():
    torch.manual_seed(0)
    plain = Encoder(5, 16, 2)
    skip = Encoder(5, 16, 2, long_skip=True)
    missing = skip.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["skips.0.bias", "skips.0.weight", "skips.1.bias", "skips.1.weight"]
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(skip(x), plain(x))


def test_long_skips_wire_first_blocks_to_last_in_mirror_order():
    torch.manual_seed(0)
    enc = Encoder(6, 8, 2, long_skip=True, final_norm=False)
    for lin in enc.skips:
        nn.init.normal_(lin.weight, std=0.3)
        nn.init.normal_(lin.bias)
    x = torch.randn(2, 5, 8)
    b = enc.blocks
    h0 = b[0](x)
    h1 = b[1](h0)
    h3 = b[3](b[2](h1))  # the two middle blocks have no skip
    h4 = b[4](enc.skips[0](torch.cat([h3, h1], -1)))  # block 4 reads block 1's output
    h5 = b[5](enc.skips[1](torch.cat([h4, h0], -1)))  # block 5 reads block 0's output
    out, inter = enc(x, return_hidden=True)
    torch.testing.assert_close(out, h5)
    torch.testing.assert_close(inter.hidden[2], h1)
    out.square().mean().backward()
    for lin in enc.skips:  # both halves of each projection learn
        assert lin.weight.grad[:, :8].abs().sum() > 0 and lin.weight.grad[:, 8:].abs().sum() > 0


# ---- the models and registry entries that use them ----

def test_vit_options_and_registry_entries():
    torch.manual_seed(0)
    vit = mmtx.create_model("vit_micro_patch2_16_spt_lsa", img_size=8)
    assert vit.patch_embed.spt and all(b.attn.lsa_scale is not None for b in vit.encoder.blocks)
    x = torch.randn(2, 3, 8, 8)
    assert vit(x).shape == (2, 10)
    assert vit.forward_features(x).shape == (2, 17, 64)  # class token + 16 patches
    _, inter = vit.forward_features(x, return_attn=True)
    assert torch.all(inter.self_attn[0].diagonal(dim1=-2, dim2=-1) == 0)
    stem = mmtx.create_model("vit_micro_patch2_16_convstem", img_size=8)
    assert stem.stem is not None and stem.patch_embed.in_chans == 32
    assert stem(x).shape == (2, 10) and stem.forward_features(x).shape == (2, 17, 64)
    big = mmtx.create_model("vit_micro_patch4_32_spt_lsa")
    assert big.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 65, 64)
    # the options change nothing else: the plain model's weights load into the same parts
    plain = mmtx.create_model("vit_micro_patch2_16", img_size=8)
    extra = {k for k in vit.state_dict()} - set(plain.state_dict())
    assert extra == {"patch_embed.norm.weight", "patch_embed.norm.bias"} | {
        f"encoder.blocks.{i}.attn.lsa_scale" for i in range(4)}
    with pytest.raises(ValueError, match="conv_stem must be >= 0"):
        mmtx.create_model("vit_micro_patch2_16", conv_stem=-1)


def test_cct_tokenizer_is_the_shared_stem_with_pooling():
    cct = mmtx.create_model("cct_2_3x1_8", dim=32)
    assert isinstance(cct.tokenizer.layers, ConvStem) and cct.tokenizer.layers.pool
    assert "tokenizer.layers.0.weight" in cct.state_dict()  # checkpoints keep their keys
    assert cct.forward_features(torch.randn(2, 3, 8, 8)).shape == (2, 16, 32)


def test_dit_long_skip_starts_at_zero_and_learns():
    torch.manual_seed(0)
    kw = dict(img_size=8, in_chans=2, num_classes=3, patch_size=2, dim=32, depth=3, num_heads=2)
    dit = mmtx.create_model("dit_micro_2_uvit", **kw)
    assert len(dit.blocks.skips) == 1 and dit.stem is not None and dit.conv_out is not None
    x, t, y = torch.randn(2, 2, 8, 8), torch.rand(2), torch.tensor([0, 2])
    out = dit(x, t, y)
    assert out.shape == x.shape and torch.all(out == 0)  # adaLN-Zero, zero head: 0 at init
    skip = dit.blocks.skips[0].weight
    torch.testing.assert_close(skip, torch.cat([torch.eye(32), torch.zeros(32, 32)], 1))
    opt = torch.optim.SGD(dit.parameters(), lr=0.5)
    for _ in range(3):  # after a few steps the skip carries a gradient into the early tokens
        opt.zero_grad()
        (dit(x, t, y) - x).square().mean().backward()
        opt.step()
    assert skip.grad[:, 32:].abs().sum() > 0
    assert mmtx.create_model("dit_micro_4_uvit", **{**kw, "patch_size": 4})(x, t, y).shape \
        == x.shape
