"""mmtx.models.conditioning: the one owner of the guidance condition drop, the timestep layouts
(mmtx's and diffusers'), and `modulate` over feature maps (the U-Net's FiLM)."""

import math

import pytest
import torch

from mmtx.layers import modulate
from mmtx.layers.conditioning import TimestepEmbedding, timestep_frequencies
from mmtx.models import dit as dit_module
from mmtx.models.conditioning import CaptionConditioner, Conditioner, check_labels
from mmtx.models.unet import ResBlock

pytestmark = pytest.mark.usefixtures("single_thread")


def _randomised(cond: Conditioner) -> Conditioner:
    torch.manual_seed(0)
    for p in cond.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return cond


def test_old_import_paths_are_the_new_objects():
    assert dit_module.Conditioner is Conditioner
    assert dit_module.CaptionConditioner is CaptionConditioner
    assert dit_module.check_labels is check_labels


def test_drop_mask_makes_exactly_those_rows_the_null_class_and_caption():
    cond = _randomised(Conditioner(16, num_classes=5, vocab_size=20, text_dim=8, text_depth=1,
                                   text_heads=2, cond_drop=0.0)).eval()
    t, y = torch.rand(4), torch.tensor([0, 1, 2, 3])
    ids = torch.tensor([[3, 4, 5], [6, 7, 0], [8, 9, 10], [11, 0, 0]])
    drop = torch.tensor([True, False, True, False])
    c, ctx, ctx_mask = cond(t, y, ids, batch=4, drop=drop)
    # The rows given by hand: null class (5) and the empty caption where drop is True.
    y_null = torch.where(drop, torch.tensor(5), y)
    ids_null = ids.masked_fill(drop[:, None], 0)
    c_ref, ctx_ref, mask_ref = cond(t, y_null, ids_null, batch=4)
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(ctx_mask, mask_ref)
    c_cond, _, _ = cond(t, y, ids, batch=4)
    assert not torch.allclose(c[0], c_cond[0]) and torch.equal(c[1], c_cond[1])
    # A dropped row sees only the null context token.
    assert ctx_mask[0, 0, 0].tolist() == [True, False, False, False]


def test_drop_probability_is_drawn_in_training_mode_only():
    cond = _randomised(Conditioner(16, num_classes=5, cond_drop=0.5))
    t, y = torch.rand(400), torch.randint(0, 5, (400,))
    null = cond.eval()(t, torch.full((400,), 5), batch=400)[0]
    torch.manual_seed(1)
    c = cond.train()(t, y, batch=400)[0]
    dropped = torch.isclose(c, null).all(1).float().mean().item()
    assert 0.4 < dropped < 0.6
    assert not torch.isclose(cond.eval()(t, y, batch=400)[0], null).all(1).any()
    # A given mask wins over the probability, in training mode too.
    none = torch.zeros(400, dtype=torch.bool)
    torch.testing.assert_close(cond.train()(t, y, batch=400, drop=none)[0],
                               cond.eval()(t, y, batch=400)[0])


def test_bad_drop_mask_is_a_clear_error():
    cond = Conditioner(16, num_classes=5)
    with pytest.raises(ValueError, match=r"cond_drop_mask must be a bool tensor of shape \(3,\)"):
        cond(torch.rand(3), torch.tensor([0, 1, 2]), batch=3, drop=torch.tensor([1, 0, 1]))


def test_diffusers_timestep_layout_matches_its_formula():
    # diffusers' get_timestep_embedding(t, 8, flip_sin_to_cos=True, downscale_freq_shift=1),
    # written out by hand: frequencies 10000^(-i / (half - 1)), [cos | sin].
    t = torch.tensor([0.0, 3.0, 500.0])
    half = 4
    freqs = torch.tensor([math.exp(-math.log(10000.0) * i / (half - 1)) for i in range(half)])
    angle = t[:, None] * freqs
    expected = torch.cat([angle.cos(), angle.sin()], dim=-1)
    got = timestep_frequencies(t, 8, layout="cos_sin", freq_shift=1.0)
    torch.testing.assert_close(got, expected)
    # The default stays mmtx's interleaved layout with shift 0.
    mmtx = timestep_frequencies(t, 8)
    f0 = 10000.0 ** (-torch.arange(0, 8, 2) / 8)
    torch.testing.assert_close(mmtx[:, 0::2], (t[:, None] * f0).sin())
    with pytest.raises(ValueError, match="layout"):
        TimestepEmbedding(8, 8, layout="flip")


def test_modulate_over_channels_is_the_unets_film():
    x = torch.randn(2, 3, 4, 5)
    shift, scale = torch.randn(2, 3), torch.randn(2, 3)
    out = modulate(x, shift, scale, channel_dim=1)
    torch.testing.assert_close(out, x * (1 + scale[:, :, None, None]) + shift[:, :, None, None])
    block = ResBlock(8, 8, 16, groups=4).eval()
    torch.nn.init.normal_(block.conv2.weight)
    h, emb = torch.randn(2, 8, 4, 4), torch.randn(2, 16)
    # by hand: the FiLM of ADM's scale-shift norm
    e = block.emb(torch.nn.functional.silu(emb))[:, :, None, None]
    scale, shift = e.chunk(2, dim=1)
    mid = block.conv1(torch.nn.functional.silu(block.norm1(h)))
    ref = block.skip(h) + block.conv2(torch.nn.functional.silu(block.norm2(mid) * (1 + scale)
                                                               + shift))
    torch.testing.assert_close(block(h, emb), ref)
