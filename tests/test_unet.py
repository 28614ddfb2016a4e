"""The U-Net denoisers: the attention-free CNN baseline and the hybrid with shared attention."""

import pytest
import torch
import torch.nn as nn

from mmtx import create_model, list_models
from mmtx.diffusion import ClassifierFreeGuidance
from mmtx.layers import Attention
from mmtx.models.unet import ResBlock, SpatialBlock, UNet

pytestmark = pytest.mark.usefixtures("single_thread")

TEXT = dict(vocab_size=30, text_dim=16, text_depth=1, text_heads=2, max_caption_len=6)


def small_unet(**kw) -> UNet:
    torch.manual_seed(0)
    args = dict(img_size=16, in_chans=3, num_classes=5, channels=(8, 16), num_heads=2,
                freq_dim=32)
    return UNet(**{**args, **kw})


def randomise_zero_init(model: nn.Module, std: float = 0.1) -> nn.Module:
    torch.manual_seed(1)
    for p in model.parameters():
        if p.dim() > 0 and not p.abs().any():
            nn.init.normal_(p, std=std)
    return model


def image_attention(model: UNet) -> list:
    """Attention modules of the image network (the caption's TextEncoder aside)."""
    text = {id(m) for m in model.cond.modules()}
    return [m for m in model.modules() if isinstance(m, Attention) and id(m) not in text]


@pytest.mark.parametrize("size,chans,channels,attn", [
    ((16, 16), 3, (8, 16), ()), ((8, 8), 1, (8,), ()), ((32, 16), 4, (8, 16, 24), (4,)),
    ((12, 20), 2, (8, 16, 16), (8, 4)), ((16, 16), 3, (8, 16), (16,))])
def test_unet_keeps_the_input_shape(size, chans, channels, attn):
    model = small_unet(img_size=16, in_chans=chans, channels=channels, attn_resolutions=attn)
    x = torch.randn(2, chans, *size)
    assert model(x, torch.rand(2), torch.tensor([0, 4])).shape == x.shape
    sigma = small_unet(img_size=16, in_chans=chans, channels=channels, learn_sigma=True)
    assert sigma(x, torch.randint(0, 1000, (2,)), torch.tensor([1, 5])).shape == \
        (2, 2 * chans, *size)


def test_untrained_unet_outputs_exactly_zero():
    for model in (small_unet(), small_unet(attn_resolutions=(8,), **TEXT),
                  create_model("unet_small"), create_model("unet_hybrid_small")):
        s = model.down_factor * 4
        x = torch.randn(2, model.in_chans, s, s)
        caption = torch.randint(1, 30, (2, 4)) if model.cond.caption is not None else None
        out = model.train()(x, torch.rand(2), torch.tensor([0, 1]), caption)
        assert out.shape == x.shape and not out.any()


def test_baseline_has_no_attention_and_the_hybrid_has_it_where_asked():
    base, hybrid = create_model("unet_small"), create_model("unet_hybrid_small")
    assert image_attention(base) == []
    blocks = [m for m in hybrid.modules() if isinstance(m, SpatialBlock)]
    # the lowest side (8 px of 32): down stage, middle, up stage
    assert len(blocks) == 3 and {b.block.attn.dim for b in blocks} == {96}
    assert all(b.block.cross_attn is None for b in blocks)
    captioned = create_model("unet_hybrid_small", **TEXT)
    assert all(m.block.cross_attn is not None for m in captioned.modules()
               if isinstance(m, SpatialBlock))
    assert image_attention(create_model("unet_small", **TEXT)) == []  # pooled caption only
    at64 = create_model("unet_hybrid_small", img_size=64)  # the lowest side follows img_size
    assert {m.block.attn.dim for m in at64.modules() if isinstance(m, SpatialBlock)} == {96}


def test_the_hybrid_starts_as_the_plain_unet():
    model = small_unet(attn_resolutions=(8,))
    # make the residual branches and output act, but leave the attention blocks as built
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, ResBlock):
            nn.init.normal_(m.conv2.weight, std=0.1)
    nn.init.normal_(model.conv_out.weight, std=0.1)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([0, 1])
    out = model.eval()(x, t, y)
    for stage in (*model.down, model.mid, *model.up):
        stage.attn = nn.ModuleList(nn.Identity() for _ in stage.attn)
    assert out.abs().max() > 0
    torch.testing.assert_close(model(x, t, y), out)


@pytest.mark.parametrize("cond_mode", ["film", "add"])
def test_a_few_steps_change_the_output_and_lower_the_loss(cond_mode):
    model = small_unet(cond_mode=cond_mode, cond_drop=0.0, attn_resolutions=(8,))
    x, t, y = torch.randn(4, 3, 16, 16), torch.rand(4), torch.tensor([0, 1, 2, 3])
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = (model(x, t, y) - target).pow(2).mean()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert model(x, t, y).abs().max() > 0 and losses[-1] < losses[0]


def test_null_label_and_guidance():
    model = randomise_zero_init(small_unet()).eval()
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 3])
    cond, uncond = model(x, t, y), model(x, t, torch.full((2,), 5))
    assert not torch.allclose(cond, uncond)
    torch.testing.assert_close(model(x, t), uncond)
    cfg = ClassifierFreeGuidance(lambda x, t, c: model(x, t, c), model.num_classes, 2.5)
    torch.testing.assert_close(cfg(x, t, y), uncond + 2.5 * (cond - uncond), atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("attn", [(), (8,)])
def test_caption_conditioning(attn):
    model = randomise_zero_init(small_unet(num_classes=0, attn_resolutions=attn, **TEXT)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    out = model(x, t, caption_ids=ids)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, t, caption_ids=torch.tensor([[11, 12], [13, 14]])))
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(x, t, caption_ids=padded), out)
    torch.testing.assert_close(model(x, t, caption_ids=torch.zeros_like(ids)), model(x, t))


def test_bad_input_is_a_clear_error():
    model = small_unet()
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    with pytest.raises(ValueError, match=r"divisible by 2 .*got H=9, W=16"):
        model(torch.randn(2, 3, 9, 16), t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 16, 16), t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, 5\]"):
        model(x, t, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match=r"attn_resolutions \[5\].*choose from \[16, 8\]"):
        small_unet(attn_resolutions=(5,))
    with pytest.raises(ValueError, match="divisible by groups=8"):
        small_unet(channels=(8, 12))
    with pytest.raises(ValueError, match="img_size must be divisible by 4"):
        small_unet(img_size=18, channels=(8, 16, 16))
    with pytest.raises(ValueError, match="cond_mode must be one of"):
        small_unet(cond_mode="concat")
    with pytest.raises(ValueError, match="caption_ids has 7 tokens, more than max_caption_len=6"):
        small_unet(**TEXT)(x, t, caption_ids=torch.ones(2, 7, dtype=torch.long))


def test_registered_unets():
    assert {"unet_small", "unet_hybrid_small", "unet_base", "unet_hybrid_base"} <= \
        set(list_models(family="unet"))
    small = create_model("unet_small")
    params = sum(p.numel() for p in small.parameters())
    assert 0.8e6 < params < 1.2e6  # the notes' baseline size: 32/64/96, two down-samplings
    assert small.down_factor == 4
