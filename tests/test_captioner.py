"""ImageCaptioner: cached decoding equals uncached (greedy and beam), the patch tokens' keys and
values projected once per image, attention maps per generated token, strings through a tokenizer,
caption scores that rank a true caption above its foils after training, and clear errors."""

import pytest
import torch
import torch.nn.functional as F

from mmtx.data import CaptionCollate, ShapesDataset, WordTokenizer, shapes_vocabulary
from mmtx.models import create_model
from mmtx.models.captioner import ImageCaptioner

pytestmark = pytest.mark.usefixtures("single_thread")
V = 40


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(img_size=16, patch_size=4, dim=32, depth=1, num_heads=2, vocab_size=V,
               max_len=20, text_depth=2)
    return ImageCaptioner(**{**cfg, **kw}).eval()


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("text_dim", [32, 48])
def test_cached_decoding_equals_uncached(beam_size, text_dim):
    model = tiny(text_dim=text_dim, text_heads=4)
    images = torch.randn(3, 3, 16, 16)
    kw = dict(max_new_tokens=15, beam_size=beam_size, stop_at_eos=False)
    cached = model.generate(images, use_cache=True, **kw)
    assert cached.shape == (3, 16) and (cached[:, 0] == model.bos_id).all()
    assert torch.equal(cached, model.generate(images, use_cache=False, **kw))
    # Stopping at eos: eos-filled after it, the same with and without the cache.
    model.eos_id = int(cached[0, 4])
    a = model.generate(images, 15, beam_size, use_cache=True)
    assert torch.equal(a, model.generate(images, 15, beam_size, use_cache=False))
    if beam_size == 1:
        hit = (a[0] == model.eos_id).nonzero()[0, 0]
        assert (a[0, hit:] == model.eos_id).all()


def test_cached_step_logits_match_teacher_forcing():
    model = tiny()
    images, ids = torch.randn(2, 3, 16, 16), torch.randint(3, V, (2, 9))
    full = model(images, ids)
    context, cache = model.encode_image(images), model.decoder.new_cache()
    steps = [model.decoder(ids[:, t:t + 1], positions=torch.tensor([t]), cache=cache,
                           context=context) for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_patch_keys_and_values_projected_once_per_image(beam_size):
    model = tiny(text_dim=48, text_heads=4)  # other width: each cross-attention has its own kv
    rows = []
    hooks = [b.cross_attn.kv.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
             for b in model.decoder.blocks.blocks]
    model.generate(torch.randn(2, 3, 16, 16), 10, beam_size, stop_at_eos=False)
    for h in hooks:
        h.remove()
    assert rows == [2, 2]  # one projection per decoder block, of the 2 images (not 2 x beams)


@pytest.mark.parametrize("beam_size", [1, 2])
def test_caption_attention_maps(beam_size):
    model = tiny()
    images = torch.randn(2, 3, 16, 24)  # another size than built for: a 4 x 6 patch grid
    ids, attn = model.caption(images, 7, beam_size=beam_size, return_attn=True)
    assert ids.shape[0] == 2 and attn.shape == (2, ids.shape[1], 4, 6)
    torch.testing.assert_close(attn.sum((-1, -2)), torch.ones(2, ids.shape[1]))
    # Map t is the cross-attention of the query that produced token t: the last query of a
    # forward over bos + the tokens before it, with the maps asked for.
    context = model.encode_image(images)
    prefix = torch.cat([torch.full((2, 1), model.bos_id), ids[:, :2]], 1)  # produces token 2
    _, inter = model.decoder.forward_features(prefix, context=context, return_attn=True)
    ref = inter.cross_attn[-1].mean(1)[:, -1].view(2, 4, 6)
    torch.testing.assert_close(attn[:, 2], ref, atol=1e-5, rtol=1e-5)


def test_caption_strings_through_a_tokenizer():
    tok = WordTokenizer(shapes_vocabulary())
    model = tiny(vocab_size=tok.vocab_size)
    images = torch.randn(2, 3, 16, 16)
    ids = model.caption(images, 6)
    texts = model.caption(images, 6, tokenizer=tok)
    assert texts == [tok.decode(row) for row in ids.tolist()]
    model.tokenizer = tok
    assert model.caption(images, 6) == texts


def test_score_is_the_summed_log_likelihood_without_padding():
    model = tiny()
    images, ids = torch.randn(2, 3, 16, 16), torch.randint(3, V, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    logp = model(images, ids[:, :-1]).log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    ref = torch.stack([logp[0].sum(), logp[1, :4].sum()])
    torch.testing.assert_close(model.score(images, ids, mask), ref)
    assert torch.isclose(model.score(images[1:], ids[1:, :5]), ref[1:]).all()


def test_trained_captioner_prefers_the_true_caption_to_every_foil():
    # A tiny captioner memorises 16 two-object scenes; then on those scenes each caption must
    # score above its foil of every kind (its log-likelihood ranks captions, as for ARO).
    torch.manual_seed(0)
    ds = ShapesDataset(16, task="caption", return_foils=True, seed=3)
    tok = WordTokenizer(shapes_vocabulary())
    collate = CaptionCollate(tok, max_len=16)
    items = [ds[i] for i in range(len(ds))]
    batch = collate(items)
    images, ids = batch["image"], batch["caption_ids"]
    model = ImageCaptioner(img_size=32, patch_size=8, dim=64, depth=2, num_heads=2, text_depth=2,
                           vocab_size=tok.vocab_size, max_len=16)
    opt = torch.optim.AdamW(model.parameters(), 3e-3, weight_decay=0.0)
    for _ in range(150):
        logits = model(images, ids[:, :-1])
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], ignore_index=tok.pad_id)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        for kind in ("swap_attributes", "swap_objects", "reverse_relation"):
            rows = [i for i, it in enumerate(items) if it[f"foil_{kind}"] is not None]
            true = model.score(images[rows], *collate.encode([items[i]["caption"] for i in rows]))
            foil = model.score(images[rows],
                               *collate.encode([items[i][f"foil_{kind}"] for i in rows]))
            assert len(rows) >= 8 and (true > foil).float().mean() >= 0.9, kind
        assert model.caption(images[:4], tokenizer=tok) == batch["caption"][:4]


def test_bad_input_is_a_clear_error():
    model = tiny()
    ids = torch.randint(3, V, (1, 5))
    with pytest.raises(ValueError, match="divisible by patch_size"):
        model(torch.randn(1, 3, 18, 16), ids)
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(1, 1, 16, 16), ids)
    with pytest.raises(ValueError, match="caption_ids has length 21, more than max_len=20"):
        model(torch.randn(1, 3, 16, 16), torch.randint(3, V, (1, 21)))
    with pytest.raises(ValueError, match="vocab_size=40"):
        model.score(torch.randn(1, 3, 16, 16), torch.full((1, 4), V))
    with pytest.raises(ValueError, match="max_len=20"):
        model.generate(torch.randn(1, 3, 16, 16), 20)
    with pytest.raises(ValueError, match="beam_width"):
        model.caption(torch.randn(1, 3, 16, 16), 4, beam_size=0)
    with pytest.raises(ValueError, match="pos_embed must be one of .*'rope'"):
        tiny(vision_pos="rope")


def test_sincos_vision_positions_are_fixed_and_follow_the_grid():
    model = tiny(vision_pos="sincos")
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("visual.pos_embed") for n in names), names
    table = model.visual.pos_table  # (1, 16 patches, 32)
    assert table.shape == (1, 16, 32) and table[0, 0].ne(table[0, 1]).any()
    images = torch.randn(2, 3, 16, 16)
    assert model(images, torch.randint(3, V, (2, 5))).shape == (2, 5, V)
    # the tokens the decoder reads change with the position table
    base = model.encode_image(images)
    model.visual.pos_table = model.visual.pos_table.roll(1, dims=1)
    assert not torch.allclose(base, model.encode_image(images))


def test_registered_sizes_take_vocabulary_and_length():
    model = create_model("captioner_tiny_patch4_32", vocab_size=50, max_len=24).eval()
    out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 24)))
    assert out.shape == (2, 24, 50)
    assert model.decoder.embed.tok.weight is model.decoder.lm_head.weight
