"""Vision models: every registered factory at tiny shapes, timm conversion, bad input, FLOPs."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer

from mmtx import create_model, list_models, model_summary
from mmtx.cli import main as cli_main
from mmtx.layers import sincos_2d_encoding
from mmtx.models import model_info
from mmtx.models.vit import ViT, from_timm, load_timm_checkpoint, vit_flops
from mmtx.viz import attention_rollout, plot_rollout, rollout_maps

# Forward, backward and gradients of every model: tests/test_models_registry.py.
VISION = [n for family in ("vit", "cnn", "hybrid") for n in list_models(family=family)]


def test_vision_families_registered():
    for name in ["vit_tiny_patch4_32", "vit_small_patch4_32", "vit_tiny_patch2_16",
                 "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224",
                 "resnet18_small", "resnet34_small", "convnet_small", "cct_2_3x2_32",
                 "cct_7_3x1_32", "cct_2_3x1_8"]:
        assert name in VISION


@pytest.mark.parametrize("name", ["vit_tiny_patch4_32", "cct_2_3x2_32", "resnet18_small",
                                  "convnet_small"])
def test_no_head_returns_features(name, small_model):
    s = small_model(name, num_classes=0)
    model, (x,) = s.model.eval(), s.inputs
    out = model(x)
    assert out.shape == (2, model.num_features)
    feats = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(out, feats)


def test_cli_models_lists_vision(capsys):
    cli_main(["models", "cct*"])
    out = capsys.readouterr().out
    assert "cct_7_3x1_32" in out and "3,760,138" not in out  # 10-class head: 3,760,139
    assert "3,760,139" in out
    cli_main(["models", "vit_micro*"])
    assert "vit_micro_patch2_16" in capsys.readouterr().out
    cli_main(["models", "--family", "hybrid"])
    rows = capsys.readouterr().out.splitlines()[1:]
    assert rows and all(r.split()[1:3] == ["hybrid", "classification"] for r in rows)
    with pytest.raises(SystemExit) as e:
        cli_main(["models", "--family", "vti"])
    assert e.value.code == 2 and "known families: captioner, clip, cnn" in capsys.readouterr().err


# --- parameter counts against the references -------------------------------------------------


def test_param_counts_match_references():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # Same config as timm's: identical parameter count.
    ours = create_model("vit_tiny_patch16_224", num_classes=1000)
    assert count(ours) == count(timm.create_model("vit_tiny_patch16_224", pretrained=False))
    # torchvision ResNet-18 differs only in the stem: 3x3 instead of 7x7 kernels.
    tv = torchvision.models.resnet18(num_classes=10)
    assert count(create_model("resnet18_small")) == count(tv) - 64 * 3 * (49 - 9)
    # The CCT paper's table: CCT-7/3x1 3.76 M, CCT-2/3x2 0.28 M parameters.
    assert abs(count(create_model("cct_7_3x1_32")) / 3.76e6 - 1) < 0.005
    assert abs(count(create_model("cct_2_3x2_32")) / 0.28e6 - 1) < 0.02


# --- timm conversion --------------------------------------------------------------------------

TIMM_CONFIGS = [
    dict(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=10),
    dict(img_size=24, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=0,
         global_pool="avg", class_token=False, qkv_bias=False),
    dict(img_size=(16, 32), patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=5,
         global_pool="avg", fc_norm=False, init_values=1e-2, qk_norm=True, no_embed_class=True,
         pre_norm=True, in_chans=1),
    dict(img_size=16, patch_size=2, embed_dim=32, depth=2, num_heads=2, num_classes=3,
         global_pool="avgmax", mlp_ratio=2.5, final_norm=False, act_layer="gelu_tanh"),
    dict(img_size=20, patch_size=5, embed_dim=24, depth=2, num_heads=2, num_classes=4,
         global_pool="token", fc_norm=True, pos_embed="none"),
    dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, num_classes=7,
         class_token=True, global_pool="max"),
]


def _perturbed_timm(cfg) -> VisionTransformer:
    torch.manual_seed(0)
    tv = VisionTransformer(**cfg).eval()
    with torch.no_grad():  # move norms, biases, tokens off their init so all of them matter
        for p in tv.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return tv


@pytest.mark.parametrize("cfg", TIMM_CONFIGS, ids=lambda c: f"{c['global_pool'] if 'global_pool' in c else 'token'}-{c['embed_dim']}")  # noqa: E501
def test_from_timm_logits_match(cfg):
    tv = _perturbed_timm(cfg)
    model = from_timm(tv)
    assert isinstance(model, ViT) and not model.training
    size = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    x = torch.randn(3, cfg.get("in_chans", 3), *size)
    with torch.no_grad():
        ref, out = tv(x), model(x)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.forward_features(x), tv.forward_features(x),
                                   atol=1e-5, rtol=1e-5)


def test_from_timm_real_timm_config():
    tv = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2).eval()
    model = from_timm(tv)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, word", [(dict(reg_tokens=2), "reg_tokens"),
                                       (dict(global_pool="map"), "global_pool"),
                                       (dict(proj_bias=False), "proj_bias"),
                                       (dict(act_layer="quick_gelu"), "act_layer")])
def test_from_timm_unsupported_option_names_it(bad, word):
    tv = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, **bad)
    with pytest.raises(ValueError, match=word):
        from_timm(tv)


def test_from_timm_rejects_other_models():
    with pytest.raises(ValueError, match="VisionTransformer"):
        from_timm(timm.create_model("resnet10t", pretrained=False))


def test_from_timm_new_image_size_resizes_positions():
    cfg = dict(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3,
               dynamic_img_size=True)
    tv = _perturbed_timm(cfg)
    model = from_timm(tv, img_size=24)
    assert model.pos_embed.weight.shape == (1, 1 + 36, 32)
    x = torch.randn(2, 3, 24, 24)
    with torch.no_grad():
        # both resample the table with antialiased bicubic interpolation: timm's numbers
        torch.testing.assert_close(model(x), tv(x), atol=1e-5, rtol=1e-5)
        # the resized table gives what on-the-fly resizing of the original table gives
        torch.testing.assert_close(model(x), from_timm(tv)(x), atol=1e-5, rtol=1e-5)


def test_load_timm_checkpoint(tmp_path):
    tv = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32,
                           patch_size=8, num_classes=5).eval()
    path = tmp_path / "vit.safetensors"
    save_file(tv.state_dict(), str(path))
    model = load_timm_checkpoint(path, "vit_tiny_patch16_224", depth=1, img_size=32,
                                 patch_size=8, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_timm_checkpoint(tmp_path / "missing.safetensors", "vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="does not fit"):
        load_timm_checkpoint(path, "vit_tiny_patch16_224", depth=2, img_size=32, patch_size=8)
    (tmp_path / "vit.pth").write_bytes(b"x")
    with pytest.raises(ValueError, match="safetensors"):
        load_timm_checkpoint(tmp_path / "vit.pth", "vit_tiny_patch16_224")


# --- inputs and positions ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_micro_patch2_16", "cct_2_3x1_8", "resnet18_small",
                                  "convnet_small"])
def test_wrong_channel_count_names_expected_and_got(name):
    model = create_model(name, in_chans=3) if model_info(name).family == "cnn" else \
        create_model(name, in_chans=3, depth=1)
    with pytest.raises(ValueError, match=r"3.*got.*1|3 channels, got 1"):
        model(torch.randn(1, 1, 16, 16))


def test_size_not_divisible_by_patch():
    model = create_model("vit_tiny_patch4_32", depth=1)
    with pytest.raises(ValueError, match=r"divisible by patch_size \(4, 4\), got H=30, W=32"):
        model(torch.randn(1, 3, 30, 32))


def test_bad_config_values():
    with pytest.raises(ValueError, match="pool"):
        ViT(img_size=8, patch_size=2, dim=16, depth=1, num_heads=2, pool="cls")
    with pytest.raises(ValueError, match="class_token"):
        ViT(img_size=8, patch_size=2, dim=16, depth=1, num_heads=2, class_token=False)
    with pytest.raises(ValueError, match="unknown model name"):
        create_model("vit_tiny_patch4_33")
    with pytest.raises(ValueError, match="resnet18_small.*drop_path_rate"):
        create_model("resnet18_small", drop_path_rate=0.1)
    with pytest.raises(ValueError, match="unknown timm model"):
        create_model("timm/not_a_model")


@pytest.mark.parametrize("pos", ["learn", "sincos"])
def test_any_image_size(pos):
    model = create_model("vit_tiny_patch4_32", depth=1, dim=32, num_heads=2, pos_embed=pos).eval()
    for h, w in [(32, 32), (16, 48), (8, 4)]:
        assert model(torch.randn(2, 3, h, w)).shape == (2, 10)


def test_sincos_positions_are_the_fixed_table():
    model = create_model("vit_tiny_patch4_32", depth=1, dim=32, num_heads=2, pos_embed="sincos",
                         class_token=False, pool="avg").eval()
    x = torch.randn(1, 3, 32, 32)
    patches = model.patch_embed(x)
    torch.testing.assert_close(model.embed(x), patches + sincos_2d_encoding(8, 8, 32)[None])
    assert not any("pos" in n for n, _ in model.named_parameters())


def test_learned_positions_resize_equals_set_img_size():
    model = create_model("vit_tiny_patch4_32", depth=1, dim=32, num_heads=2).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before = model(x)  # resized on the fly from the 8x8 table
        model.set_img_size(48)
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=1e-5)


def test_timm_model_by_name():
    model = create_model("timm/resnet10t", in_chans=1, num_classes=4, img_size=16)
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)
    vit = create_model("timm/vit_tiny_patch16_224", in_chans=1, num_classes=4, img_size=32,
                       depth=1)
    assert vit(torch.randn(2, 1, 32, 32)).shape == (2, 4)


# --- attention maps, FLOPs, rollout -----------------------------------------------------------


def test_attention_maps_and_fused_path_agree():
    model = create_model("vit_micro_patch2_16", depth=2).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        tokens, inter = model.forward_features(x, return_attn=True)
        torch.testing.assert_close(tokens, model.forward_features(x), atol=1e-5, rtol=1e-5)
    assert len(inter.self_attn) == 2
    assert inter.self_attn[0].shape == (2, 4, 65, 65)
    torch.testing.assert_close(inter.self_attn[1].sum(-1), torch.ones(2, 4, 65))


def test_flops_match_hand_formula():
    model = create_model("vit_tiny_patch4_32", depth=2)
    info = model_summary(model, (3, 32, 32))
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["flops"] == vit_flops(32, 4, 3, 192, 2, 4.0, 10)


def test_resnet_flops_match_conv_formula():
    model = create_model("resnet18_small").eval()
    hand = []

    def hook(m, inp, out):
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            hand.append(2 * k * out.numel())
        elif isinstance(m, nn.Linear):
            hand.append(2 * m.in_features * m.out_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in handles:
        h.remove()
    flops = model_summary(model, (3, 32, 32))["flops"]
    assert flops == sum(hand)
    assert 1.0e9 < flops < 1.2e9  # ResNet-18 at 32 px with a stride-1 stem: ~0.56 GMAC


def test_rollout_by_hand():
    a1 = torch.tensor([[[[0.5, 0.5], [0.0, 1.0]]]])  # (B=1, H=1, 2, 2)
    a2 = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])
    r = attention_rollout([a1, a2])
    eye = torch.eye(2)
    m1, m2 = 0.5 * a1[0, 0] + 0.5 * eye, 0.5 * a2[0, 0] + 0.5 * eye
    torch.testing.assert_close(r[0], m2 @ m1)
    torch.testing.assert_close(r.sum(-1), torch.ones(1, 2))
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout([a1], head_fusion="median")


def test_rollout_maps_and_plot(tmp_path):
    model = create_model("vit_micro_patch2_16", img_size=8, in_chans=1, depth=2)
    x = torch.randn(3, 1, 8, 8)
    maps = rollout_maps(model, x)
    assert maps.shape == (3, 8, 8)
    assert maps.min() >= 0 and maps.max() <= 1 and torch.isfinite(maps).all()
    path = plot_rollout(x, maps, tmp_path / "rollout.png", titles=["a", "b", "c"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    avg = create_model("vit_micro_patch2_16", img_size=8, in_chans=1, depth=2,
                       class_token=False, pool="avg")
    assert rollout_maps(avg, x).shape == (3, 8, 8)
