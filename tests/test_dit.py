"""The adaLN-Zero option of the shared Block, the DiT, and its conversion from diffusers."""

import pytest
import torch
import torch.nn as nn

from mmtx import create_model, list_models
from mmtx.diffusion import ClassifierFreeGuidance
from mmtx.layers import Attention, Block, Encoder, modulate, sincos_2d_encoding
from mmtx.models.dit import DiT, diffusers_sincos_2d, from_diffusers_dit

pytestmark = pytest.mark.usefixtures("single_thread")


def small_dit(**kw) -> DiT:
    torch.manual_seed(0)
    args = dict(img_size=8, patch_size=2, in_chans=3, num_classes=5, dim=32, depth=2,
                num_heads=2, freq_dim=32)
    return DiT(**{**args, **kw})


def randomise_zero_init(model: nn.Module, std: float = 0.1) -> nn.Module:
    """Give the zero-initialised parts (adaLN, final layer) random values, so conditions act."""
    torch.manual_seed(1)
    for p in model.parameters():
        if p.dim() > 0 and not p.abs().any():
            nn.init.normal_(p, std=std)
    return model


# ---- adaLN-Zero in the shared Block ----


@pytest.mark.parametrize("cross", [False, True])
def test_adaln_block_starts_as_identity_and_has_no_norm_affine(cross):
    torch.manual_seed(0)
    block = Block(16, 2, cond_dim=8, cross_attention=cross, context_dim=12)
    assert all(n.weight is None for n in (block.norm1, block.norm2))
    assert block.ada[1].out_features == (9 if cross else 6) * 16
    x, c, ctx = torch.randn(2, 5, 16), torch.randn(2, 8), torch.randn(2, 3, 12)
    assert torch.equal(block(x, context=ctx if cross else None, cond=c), x)


def test_adaln_block_is_dits_two_line_modulation():
    torch.manual_seed(0)
    block = randomise_zero_init(Block(16, 2, cond_dim=8, qkv_bias=True)).eval()
    x, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    # DiT's block, written out: six chunks, attention then MLP.
    sa, ca, ga, sm, cm, gm = block.ada(c).chunk(6, dim=1)
    ref = x + ga[:, None] * block.attn(modulate(block.norm1(x), sa, ca))
    ref = ref + gm[:, None] * block.mlp(modulate(block.norm2(ref), sm, cm))
    torch.testing.assert_close(block(x, cond=c), ref)


def test_adaln_cross_attention_chunks_follow_the_first_six():
    torch.manual_seed(0)
    block = randomise_zero_init(Block(16, 2, cond_dim=8, cross_attention=True, context_dim=12))
    x, c, ctx = torch.randn(2, 5, 16), torch.randn(2, 8), torch.randn(2, 3, 12)
    sa, ca, ga, sm, cm, gm, sx, cx, gx = block.ada(c).chunk(9, dim=1)
    ref = x + ga[:, None] * block.attn(modulate(block.norm1(x), sa, ca))
    ref = ref + gx[:, None] * block.cross_attn(modulate(block.norm_cross(ref), sx, cx),
                                               context=ctx)
    ref = ref + gm[:, None] * block.mlp(modulate(block.norm2(ref), sm, cm))
    torch.testing.assert_close(block.eval()(x, context=ctx, cond=c), ref)


def test_stack_passes_cond_and_plain_blocks_are_unchanged():
    torch.manual_seed(0)
    enc = randomise_zero_init(Encoder(2, 16, 2, cond_dim=8, final_norm=False))
    x = torch.randn(2, 5, 16)
    a, b = enc(x, cond=torch.randn(2, 8)), enc(x, cond=torch.randn(2, 8))
    assert not torch.allclose(a, b)  # the condition reaches the blocks
    plain = Block(16, 2)
    assert plain.ada is None and plain.norm1.weight is not None


def test_adaln_block_errors():
    block, plain = Block(16, 2, cond_dim=8), Block(16, 2)
    x = torch.randn(2, 5, 16)
    with pytest.raises(ValueError, match=r"cond must be \(B, 8\).*got None"):
        block(x)
    with pytest.raises(ValueError, match=r"cond must be \(B, 8\).*got \(2, 7\)"):
        block(x, cond=torch.randn(2, 7))
    with pytest.raises(ValueError, match="without cond_dim"):
        plain(x, cond=torch.randn(2, 8))
    with pytest.raises(ValueError, match="norm_first=False"):
        Block(16, 2, cond_dim=8, norm_first=False)


# ---- the DiT ----


@pytest.mark.parametrize("size,patch,chans", [((8, 8), 2, 3), ((16, 16), 4, 1),
                                              ((8, 12), 4, 4), ((12, 12), 2, 2)])
def test_dit_keeps_the_input_shape(size, patch, chans):
    model = small_dit(img_size=8 if patch == 2 else 16, patch_size=patch, in_chans=chans)
    x = torch.randn(2, chans, *size)
    assert model(x, torch.rand(2), torch.tensor([0, 4])).shape == x.shape
    sigma = small_dit(patch_size=patch, img_size=size[0], in_chans=chans, learn_sigma=True)
    assert sigma(x, torch.rand(2), torch.tensor([1, 2])).shape == (2, 2 * chans, *size)
    convs = randomise_zero_init(small_dit(img_size=8 if patch == 2 else 16, patch_size=patch,
                                          in_chans=chans, conv_stem=6, conv_out=True))
    assert convs(x, torch.rand(2), torch.tensor([0, 4])).shape == x.shape


def test_untrained_dit_outputs_exactly_zero():
    for model in (small_dit(), small_dit(vocab_size=20, text_dim=16, text_depth=1,
                                         text_heads=2), create_model("dit_micro_4"),
                  small_dit(conv_stem=8, conv_out=True)):
        size = model.patch_embed.img_size
        x = torch.randn(2, model.in_chans, *size)
        y = torch.tensor([0, 1])
        caption = torch.randint(1, 20, (2, 4)) if model.cond.caption is not None else None
        out = model.train()(x, torch.rand(2), y, caption)
        assert out.shape == x.shape and not out.any()


def test_a_few_steps_change_the_output_and_lower_the_loss():
    model = small_dit(cond_drop=0.0)
    x, t, y = torch.randn(4, 3, 8, 8), torch.rand(4), torch.tensor([0, 1, 2, 3])
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = (model(x, t, y) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, t, y).abs().max() > 0 and losses[-1] < losses[0]


def test_null_label_classifier_free_guidance_and_label_drop():
    model = randomise_zero_init(small_dit()).eval()
    x, t = torch.randn(3, 3, 8, 8), torch.rand(3)
    y = torch.tensor([0, 2, 4])
    null = torch.full((3,), model.num_classes)
    cond, uncond = model(x, t, y), model(x, t, null)
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model(x, t), uncond)  # y=None is the null class

    def fn(x, t, c):
        return model(x, t, c)
    torch.testing.assert_close(ClassifierFreeGuidance(fn, model.num_classes, 1.0)(x, t, y), cond)
    guided = ClassifierFreeGuidance(fn, model.num_classes, 3.0)(x, t, y)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-5)
    # In training mode whole rows are made unconditional with probability cond_drop.
    model.cond.cond_drop = 0.5
    torch.manual_seed(0)
    out = model.train()(x.repeat(20, 1, 1, 1), t.repeat(20), y.repeat(20))
    rows_null = [torch.allclose(o, u, atol=1e-6) for o, u in zip(out, uncond.repeat(20, 1, 1, 1))]
    assert 10 < sum(rows_null) < 50


def test_caption_conditioning_null_caption_and_padding():
    model = randomise_zero_init(small_dit(num_classes=0, vocab_size=30, text_dim=16,
                                          text_depth=1, text_heads=2, max_caption_len=6)).eval()
    assert all(b.cross_attn is not None for b in model.blocks.blocks)
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])  # 0 = pad
    out = model(x, t, caption_ids=ids)
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = model(x, t, caption_ids=torch.tensor([[11, 12, 13], [14, 15, 16]]))
    assert not torch.allclose(out, other)
    # Extra padding changes nothing; an explicit mask equals the one read from pad ids.
    padded = torch.cat([ids, torch.zeros(2, 2, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(x, t, caption_ids=padded), out)
    torch.testing.assert_close(model(x, t, caption_ids=ids, caption_mask=ids != 0), out)
    # The null caption: all pad, a zero mask, or no caption at all.
    null = model(x, t)
    torch.testing.assert_close(model(x, t, caption_ids=torch.zeros_like(ids)), null)
    torch.testing.assert_close(model(x, t, caption_ids=ids, caption_mask=torch.zeros_like(ids)),
                               null)
    assert not torch.allclose(null, out)

    def fn(x, t, c):
        return model(x, t, **c)
    cfg = ClassifierFreeGuidance(fn, {"caption_ids": 0, "caption_mask": 0}, 2.0)
    guided = cfg(x, t, {"caption_ids": ids, "caption_mask": ids != 0})
    torch.testing.assert_close(guided, null + 2.0 * (out - null), atol=1e-5, rtol=1e-5)


def test_class_and_caption_together_and_backward_reaches_the_text_encoder():
    model = small_dit(vocab_size=30, text_dim=16, text_depth=1, text_heads=2, cond_drop=0.0)
    model = randomise_zero_init(model)
    out = model(torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([1, 2]),
                torch.randint(1, 30, (2, 4)))
    out.square().mean().backward()
    text = model.cond.caption.encoder
    assert text.embed.tok.weight.grad.abs().sum() > 0


def test_bad_input_is_a_clear_error():
    model = small_dit()
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(2, 3, 9, 8), t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"img_size .* divisible by patch_size"):
        small_dit(img_size=10, patch_size=4)
    for m in (model, small_dit(conv_stem=8)):
        with pytest.raises(ValueError, match="3 channels, got 4"):
            m(torch.randn(2, 4, 8, 8), t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 5\] \(5 = the null class\).*6"):
        model(x, t, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"y must lie in .*-1"):
        model(x, t, torch.tensor([-1, 0]))
    with pytest.raises(ValueError, match=r"y must be integer class ids of shape \(2,\)"):
        model(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"t must be a scalar or \(2,\)"):
        model(x, torch.rand(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="caption_ids given to a model built with vocab_size=0"):
        model(x, t, torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes=0"):
        small_dit(num_classes=0)(x, t, torch.tensor([0, 1]))
    captioned = small_dit(vocab_size=30, text_dim=16, text_depth=1, text_heads=2,
                          max_caption_len=4)
    with pytest.raises(ValueError, match="caption_ids has 5 tokens, more than max_caption_len=4"):
        captioned(x, t, caption_ids=torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"caption_ids must lie in \[0, vocab_size=30\)"):
        captioned(x, t, caption_ids=torch.full((2, 3), 30))
    with pytest.raises(ValueError, match="sincos must be one of"):
        small_dit(sincos="mae")


def test_registered_sizes_have_the_papers_widths():
    names = list_models(family="dit")
    for size in ("s", "b", "l", "xl"):
        assert {f"dit_{size}_{p}" for p in (2, 4, 8)} <= set(names)
    assert {"dit_micro_2", "dit_micro_4", "dit_tiny_2", "dit_tiny_4"} <= set(names)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        xl = create_model("dit_xl_2", learn_sigma=True)
        s8 = create_model("dit_s_8", img_size=64, in_chans=3, num_classes=10)
    assert (xl.dim, len(xl.blocks.blocks), xl.blocks.blocks[0].attn.num_heads) == (1152, 28, 16)
    # DiT's own count (675,129,632) includes its fixed position table as a frozen parameter.
    assert sum(p.numel() for p in xl.parameters()) + 256 * 1152 == 675_129_632
    assert (s8.dim, len(s8.blocks.blocks), s8.blocks.blocks[0].attn.num_heads) == (384, 12, 6)
    assert s8.patch_embed.grid_size == (8, 8) and s8.head.out_features == 8 * 8 * 3
    assert all(isinstance(b.attn, Attention) for b in xl.blocks.blocks)  # the one attention


def test_diffusers_sincos_layout_is_a_channel_permutation():
    ours, theirs = sincos_2d_encoding(3, 4, 16), diffusers_sincos_2d(3, 4, 16)
    assert torch.equal(theirs.sort(dim=1).values, ours.sort(dim=1).values)
    # token 5 is row 1, column 1; the first quarter are the column's sines
    torch.testing.assert_close(theirs[5, :4], torch.sin(1 / 10000 ** (torch.arange(4) / 4.0)))


# ---- conversion from diffusers ----


def _diffusers_dit(**kw):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    args = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, num_layers=2,
                sample_size=8, patch_size=2, num_embeds_ada_norm=7, norm_eps=1e-5)
    ref = diffusers.DiTTransformer2DModel(**{**args, **kw})
    # diffusers gives every block its own timestep/label embedding; published weights hold one
    # copy in all of them, which is what mmtx's DiT (one embedding) can load.
    shared = ref.transformer_blocks[0].norm1.emb.state_dict()
    for block in ref.transformer_blocks[1:]:
        block.norm1.emb.load_state_dict(shared)
    for name, p in ref.named_parameters():  # diffusers zero-initialises none of these; be sure
        if "proj_out" in name or "norm1.linear" in name:
            nn.init.normal_(p, std=0.1)
    return ref.eval()


@pytest.mark.parametrize("kw", [dict(out_channels=8), dict(attention_bias=False,
                                                           activation_fn="gelu", norm_eps=1e-6)])
def test_from_diffusers_dit_matches(kw):
    ref = _diffusers_dit(**kw)
    model = from_diffusers_dit(ref)
    assert not model.training
    x = torch.randn(3, 4, 8, 8)
    t, y = torch.tensor([0, 417, 999]), torch.tensor([0, 6, 7])  # 7 = the null class
    with torch.no_grad():
        expected = ref(x, t, y).sample
        got = model(x, t, y)
        assert got.shape == expected.shape == (3, kw.get("out_channels", 4), 8, 8)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        # a float time in [0, 1] is mmtx's reading of step / 1000
        torch.testing.assert_close(model(x, t / 1000, y), expected, atol=1e-4, rtol=0)


def test_from_diffusers_dit_refuses_what_it_cannot_load():
    with pytest.raises(ValueError, match=r"activation_fn.*geglu"):
        from_diffusers_dit(_diffusers_dit(activation_fn="geglu"))
    with pytest.raises(ValueError, match="norm_elementwise_affine"):
        from_diffusers_dit(_diffusers_dit(norm_elementwise_affine=True))
    with pytest.raises(ValueError, match="out_channels"):
        from_diffusers_dit(_diffusers_dit(out_channels=5))
    ref = _diffusers_dit()
    nn.init.normal_(ref.transformer_blocks[1].norm1.emb.class_embedder.embedding_table.weight)
    with pytest.raises(ValueError, match=r"transformer_blocks\[1\]\.norm1\.emb differs"):
        from_diffusers_dit(ref)
