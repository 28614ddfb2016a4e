"""CLIP: shapes, normalised features, the clamped temperature, the loss through the model equal to
contrastive.clip_loss, text pooling, zero-shot classifiers, retrieval, HF CLIP and open_clip
conversions to 1e-4 (small random configs, nothing downloaded), unsupported options, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from mmtx.data import WordTokenizer, shapes_vocabulary
from mmtx.layers.blocks import QuickGELU
from mmtx.models import create_model
from mmtx.models.clip import CLIP, from_hf_clip, from_open_clip
from mmtx.models.contrastive import clip_loss

pytestmark = pytest.mark.usefixtures("single_thread")
V = 40


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(img_size=16, patch_size=4, dim=32, depth=1, num_heads=2, vocab_size=V,
               max_len=12, text_dim=24, text_depth=1, text_heads=2, embed_dim=16)
    return CLIP(**{**cfg, **kw}).eval()


def test_features_are_normalised_and_the_scale_starts_at_one_over_0_07():
    model = tiny()
    images, ids = torch.randn(3, 3, 16, 16), torch.randint(3, V, (3, 7))
    img, txt, scale = model(images, ids)
    assert img.shape == txt.shape == (3, 16) and scale.dim() == 0
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(scale, torch.tensor(1 / 0.07))
    raw = model.encode_image(images, normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), img)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


def test_logit_scale_is_clamped_at_100():
    model = tiny()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    scale = model.scale()
    assert scale.item() == pytest.approx(100.0)
    scale.backward()
    assert model.logit_scale.grad.item() == 0.0  # no push further past the bound
    assert model.logit_scale.item() == pytest.approx(math.log(1000.0))  # parameter unchanged


def test_loss_through_the_model_is_clip_loss_with_hard_negatives():
    model = tiny().train()
    images, ids = torch.randn(4, 3, 16, 16), torch.randint(3, V, (4, 7))
    foils, has_foil = torch.randint(3, V, (4, 7)), torch.tensor([True, False, True, True])
    img, txt, scale = model(images, ids)
    neg = model.encode_text(foils)
    ours = model.loss(img, txt, scale)
    torch.testing.assert_close(ours, clip_loss(img, txt, scale))
    logits = scale * img @ txt.T  # by hand: symmetric cross-entropy over the batch
    labels = torch.arange(4)
    torch.testing.assert_close(ours, (F.cross_entropy(logits, labels)
                                      + F.cross_entropy(logits.T, labels)) / 2)
    hard = model.loss(img, txt, scale, neg, has_foil)
    torch.testing.assert_close(hard, clip_loss(img, txt, scale, hard_negatives=neg,
                                               hard_negative_mask=has_foil))
    assert hard > ours  # more negatives, a larger loss
    hard.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_text_pooling_at_end_of_text():
    model = tiny()  # text_pool="eos", eos_id=2
    ids = torch.randint(3, V, (2, 8))
    ids[0, 4], ids[1, 6] = 2, 2
    x = model.text.forward_features(ids)
    torch.testing.assert_close(model.text.pooled(x, ids=ids), x[[0, 1], [4, 6]])
    # Causal text: what follows the end of text (padding) does not change the embedding.
    padded = ids.clone()
    padded[0, 5:] = 0
    torch.testing.assert_close(model.encode_text(ids)[0], model.encode_text(padded)[0])
    model.text.pool = "argmax"
    torch.testing.assert_close(model.text.pooled(x, ids=ids), x[[0, 1], ids.argmax(-1)])


def test_zero_shot_classifier():
    tok = WordTokenizer(shapes_vocabulary())
    model = tiny(vocab_size=tok.vocab_size)
    names, templates = ["circle", "square", "star"], ["a {}", "a large {} shape"]
    classes = model.zero_shot_classifier(names, templates, tok)
    assert classes.shape == (3, 16)
    torch.testing.assert_close(classes.norm(dim=-1), torch.ones(3))
    one = model.encode_text(torch.tensor([tok.encode("a large square shape")]))[0]
    two = model.encode_text(torch.tensor([tok.encode("a square")]))[0]
    torch.testing.assert_close(classes[1], F.normalize(one + two, dim=0), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="'a hexagon' has a word outside"):
        model.zero_shot_classifier(["hexagon"], ["a {}"], tok)


def test_bad_input_is_a_clear_error():
    model = tiny()
    ids = torch.randint(3, V, (1, 5))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(1, 3, 15, 16), ids)
    with pytest.raises(ValueError, match="max_len=12"):
        model.encode_text(torch.randint(3, V, (1, 13)))
    with pytest.raises(ValueError, match="vocab_size=40"):
        model.encode_text(torch.full((1, 3), V))


def test_registered_sizes():
    model = create_model("clip_tiny_patch4_32", vocab_size=50, max_len=20).eval()
    img, txt, _ = model(torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 20)))
    assert img.shape == txt.shape == (2, 128)
    base = create_model("clip_base_patch32_224", dim=32, depth=1, num_heads=2, text_dim=32,
                        text_depth=1, text_heads=2, embed_dim=16)
    assert isinstance(base.visual.encoder.blocks[0].mlp.act, QuickGELU)


# --- conversions ---------------------------------------------------------------------------


def _hf_clip(eos_token_id=49407, vision_act="quick_gelu", text_act="quick_gelu"):
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                         eos_token_id=eos_token_id, hidden_act=text_act),
        vision_config=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, image_size=32, patch_size=8,
                           hidden_act=vision_act),
        projection_dim=24)
    torch.manual_seed(0)
    return transformers.CLIPModel(cfg).eval()


def _pooled(out):  # transformers >= 5 returns an output object, older ones the tensor
    return getattr(out, "pooler_output", out)


@pytest.mark.parametrize("eos_token_id", [2, 98])  # old configs pool at the arg-max id
def test_hf_clip_conversion_matches(eos_token_id):
    hf = _hf_clip(eos_token_id)
    model = from_hf_clip(hf).eval()
    assert model.text.pool == ("argmax" if eos_token_id == 2 else "eos")
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(3, 90, (2, 12), generator=g)
    ids[0, 7], ids[1, 9] = 98, 98  # the end-of-text token (also the largest id)
    mask = torch.ones_like(ids)
    mask[0, 8:], ids[0, 8:] = 0, 0  # right padding
    with torch.no_grad():
        ref_img = _pooled(hf.get_image_features(pixel_values=images))
        ref_txt = _pooled(hf.get_text_features(input_ids=ids, attention_mask=mask))
        torch.testing.assert_close(model.encode_image(images, normalize=False), ref_img,
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(ids, mask, normalize=False), ref_txt,
                                   atol=1e-4, rtol=1e-4)
    assert model.logit_scale.item() == pytest.approx(hf.logit_scale.item())


def test_hf_clip_unsupported_options_are_named():
    with pytest.raises(ValueError, match="vision act 'gelu' differs from text act 'quick_gelu'"):
        from_hf_clip(_hf_clip(vision_act="gelu"))
    with pytest.raises(ValueError, match="text_config.hidden_act='mish'"):
        from_hf_clip(_hf_clip(text_act="mish"))
    with pytest.raises(ValueError, match="must be a transformers CLIPModel"):
        from_hf_clip(torch.nn.Linear(2, 2))


def _open_clip(quick_gelu=True, vision=None, text=None, **kw):
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    vision_cfg = dict(layers=2, width=48, head_width=12, patch_size=8, image_size=32,
                      **(vision or {}))
    text_cfg = dict(context_length=16, vocab_size=99, width=32, heads=4, layers=2,
                    **(text or {}))
    return open_clip.CLIP(24, vision_cfg, text_cfg, quick_gelu=quick_gelu, **kw).eval()


OPEN_CLIP_CONFIGS = {
    "openai": {},
    "gelu_avg_pool_layer_scale": dict(
        quick_gelu=False, vision=dict(pool_type="avg", ls_init_value=0.1),
        text=dict(ls_init_value=0.1, pool_type="eos", eos_id=98)),
    "ln_after_pool_bidirectional": dict(
        vision=dict(final_ln_after_pool=True, mlp_ratio=2.0),
        text=dict(no_causal_mask=True, pool_type="last")),
}


@pytest.mark.parametrize("name", list(OPEN_CLIP_CONFIGS))
def test_open_clip_conversion_matches(name):
    oc = _open_clip(**OPEN_CLIP_CONFIGS[name])
    with torch.no_grad():  # random layer scales, so that a missed copy shows
        for n, p in oc.named_parameters():
            if n.endswith("gamma"):
                p.uniform_(0.5, 1.5)
    model = from_open_clip(oc).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 32, 32, generator=g)
    ids = torch.randint(1, 90, (2, 16), generator=g)  # open_clip takes the full context
    ids[0, 7], ids[1, 12] = 98, 98
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images, normalize=False),
                                   oc.encode_image(images), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(ids, normalize=False), oc.encode_text(ids),
                                   atol=1e-4, rtol=1e-4)
        img, txt, scale = model(images, ids)
        ref_img, ref_txt = oc.get_logits(images, ids)
        torch.testing.assert_close(scale * img @ txt.T, ref_img, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kw, named", [
    (dict(vision=dict(attentional_pool=True)), "attentional_pool"),
    (dict(vision=dict(no_ln_pre=True)), "no_ln_pre=True"),
    (dict(vision=dict(pos_embed_type="sin_cos_2d")), "sin_cos_2d"),
    (dict(vision=dict(qk_norm=True)), "block_type=CustomResidualAttentionBlock"),
    (dict(text=dict(proj_bias=True)), "proj_bias=True"),
    (dict(init_logit_bias=-10.0), "init_logit_bias"),
])
def test_open_clip_unsupported_options_are_named(kw, named):
    with pytest.raises(ValueError, match=named):
        from_open_clip(_open_clip(**kw))
