"""Text models: decoding (cache, top-k/top-p, eos, left padding, beam search), heads, errors."""

import pytest
import torch

from mmtx.models import create_model
from mmtx.models.decoding import filter_logits
from mmtx.models.text import Seq2Seq, TextDecoder, TextEncoder

V = 50


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=V, max_len=64, dim=32, depth=2, num_heads=4)
    return TextDecoder(**{**cfg, **kw}).eval()


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope"])
def test_cached_equals_uncached_greedy(pos):
    model = tiny_gpt(pos=pos)
    ids = torch.randint(0, V, (3, 5), generator=torch.Generator().manual_seed(1))
    a = model.generate(ids, 20, temperature=0, use_cache=True)
    b = model.generate(ids, 20, temperature=0, use_cache=False)
    assert a.shape == (3, 25)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :5], ids)


def test_cached_step_logits_match_full_forward():
    model = tiny_gpt()
    ids = torch.randint(0, V, (2, 12))
    full = model(ids)
    cache = model.new_cache()
    parts = [model(ids[:, :7], cache=cache)]
    parts += [model(ids[:, t:t + 1], positions=torch.tensor([[t], [t]]), cache=cache)
              for t in range(7, 12)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_top_k_never_samples_outside_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(4, V)
    allowed = logits.topk(5, dim=-1).indices
    model = tiny_gpt()
    filtered = filter_logits(logits, top_k=5)
    assert (torch.isfinite(filtered).sum(-1) == 5).all()
    g = torch.Generator().manual_seed(0)
    from mmtx.models.decoding import sample_next
    for _ in range(200):
        tok = sample_next(logits, temperature=2.0, top_k=5, generator=g)
        assert (allowed == tok[:, None]).any(-1).all()
    # Through the model too: every generated token is among the top-k of its step's logits.
    ids = torch.randint(0, V, (2, 3))
    out = model.generate(ids, 10, temperature=3.0, top_k=3, generator=g)
    for t in range(3, 13):
        step_logits = model(out[:, :t])[:, -1]
        assert (step_logits.topk(3, -1).indices == out[:, t, None]).any(-1).all()


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.9, 0.03, 0.02]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.75))
    assert kept.tolist() == [[True, True, False, False], [False, True, False, False]]
    g = torch.Generator().manual_seed(0)
    from mmtx.models.decoding import sample_next
    for _ in range(200):
        tok = sample_next(probs.log(), top_p=0.75, generator=g)
        assert kept[torch.arange(2), tok].all()


def test_eos_stops_each_sequence():
    model = tiny_gpt()
    ids = torch.randint(0, V, (4, 4), generator=torch.Generator().manual_seed(3))
    greedy = model.generate(ids, 12, temperature=0)
    eos = int(greedy[0, 6])  # a token row 0 certainly produces
    out = model.generate(ids, 12, temperature=0, eos_id=eos)
    assert out.shape == greedy.shape
    for row, ref in zip(out, greedy):
        new, ref_new = row[4:], ref[4:]
        hits = (ref_new == eos).nonzero()
        stop = int(hits[0]) if len(hits) else len(ref_new) - 1
        assert torch.equal(new[:stop + 1], ref_new[:stop + 1])  # same until eos
        assert (new[stop + 1:] == eos).all() if len(hits) else torch.equal(new, ref_new)


def test_left_padded_batch_equals_one_by_one():
    model = tiny_gpt()
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(1, V, (n,), generator=g) for n in (3, 7, 5)]
    L = 7
    ids = torch.zeros(3, L, dtype=torch.long)
    mask = torch.zeros(3, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):], mask[i, L - len(p):] = p, 1
    for use_cache in (True, False):
        batch = model.generate(ids, 10, temperature=0, attention_mask=mask, use_cache=use_cache)
        for i, p in enumerate(prompts):
            single = model.generate(p[None], 10, temperature=0)
            assert torch.equal(batch[i, L:], single[0, len(p):])


def test_seq2seq_beam_width_one_is_greedy_and_beams_score_higher():
    torch.manual_seed(0)
    model = Seq2Seq(vocab_size=30, max_len=32, dim=32, depth=2, num_heads=4, drop_rate=0.0).eval()
    src = torch.randint(3, 30, (3, 6))
    beam1 = model.generate(src, 10, beam_width=1)
    # Greedy by hand: full recompute, argmax, eos-filled after eos.
    memory = model.encode(src)
    tgt = torch.full((3, 1), model.bos_id)
    done = torch.zeros(3, dtype=torch.bool)
    for _ in range(10):
        nxt = model.decode(tgt, memory)[:, -1].argmax(-1).masked_fill(done, model.eos_id)
        done |= nxt == model.eos_id
        tgt = torch.cat([tgt, nxt[:, None]], 1)
        if done.all():
            break
    assert torch.equal(beam1, tgt)

    def logprob(seq):
        lp = model(src, seq[:, :-1]).log_softmax(-1).gather(-1, seq[:, 1:, None])[..., 0]
        return lp.sum(-1)

    beam4 = model.generate(src, 10, beam_width=4, length_penalty=0.0)
    if beam4.shape[1] == beam1.shape[1] and not (beam1 == model.eos_id).any():
        assert (logprob(beam4) >= logprob(beam1) - 1e-5).all()


@pytest.mark.parametrize("beam_width", [1, 3])
def test_decoder_with_context_cached_equals_uncached(beam_width):
    model = tiny_gpt(cross_attention=True, context_dim=24)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, V, (3, 4), generator=g)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1, :2] = 0  # left padding
    context = torch.randn(3, 6, 24, generator=g)
    context_mask = torch.ones(3, 6, dtype=torch.bool)
    context_mask[2, 4:] = False
    kw = dict(temperature=0, attention_mask=mask, context=context, context_mask=context_mask,
              beam_width=beam_width)
    a = model.generate(ids, 10, use_cache=True, **kw)
    assert a.shape == (3, 14) and torch.equal(a, model.generate(ids, 10, use_cache=False, **kw))
    hidden = context.clone()
    hidden[2, 4:] = 100.0  # masked context tokens are not read
    assert torch.equal(a, model.generate(ids, 10, **{**kw, "context": hidden}))
    if beam_width > 1:  # no eos: the best of 3 beams is at least as likely as greedy
        greedy = model.generate(ids[:1], 10, temperature=0, context=context[:1])
        beam = model.generate(ids[:1], 10, context=context[:1], beam_width=3, length_penalty=0.0)

        def logprob(seq):
            logits = model(seq[:, :-1], context=context[:1]).log_softmax(-1)
            return logits.gather(-1, seq[:, 1:, None])[:, 3:].sum()

        assert logprob(beam) >= logprob(greedy) - 1e-5
    with pytest.raises(ValueError, match="cross_attention=False"):
        tiny_gpt().generate(ids, 2, context=context)
    with pytest.raises(ValueError, match="context must be given"):
        model.generate(ids, 2)
    with pytest.raises(ValueError, match="beam search"):
        model.generate(ids, 2, context=context, beam_width=2, top_k=3)


def test_encoder_heads_and_padding():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=V, max_len=16, dim=32, depth=2, num_heads=4, num_classes=3,
                      pool="mean", type_vocab_size=2, drop_rate=0.0,
                      attn_drop_rate=0.0).eval()
    ids = torch.randint(0, V, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    assert enc(ids, mask).shape == (2, 3)
    assert enc.forward_mlm(ids, mask).shape == (2, 8, V)
    # Padding is invisible: changing padded tokens changes nothing for the real ones.
    ids2 = ids.clone()
    ids2[1, 5:] = (ids2[1, 5:] + 1) % V
    torch.testing.assert_close(enc(ids, mask), enc(ids2, mask))
    cls = TextEncoder(vocab_size=V, max_len=16, dim=32, depth=1, num_heads=4, num_classes=2)
    assert cls(ids).shape == (2, 2)


@pytest.mark.parametrize("name", ["gpt_tiny", "bert_tiny", "seq2seq_tiny"])
def test_registered_factories_take_overrides(name):
    model = create_model(name, vocab_size=40, max_len=20).eval()
    ids = torch.randint(0, 40, (2, 10))
    out = model(ids, ids) if name.startswith("seq2seq") else model(ids)
    assert out.shape == (2, 10, 40)
    loss = out.logsumexp(-1).mean()
    loss.backward()  # every parameter that should learn gets a gradient (the pooler is unused
    assert all(p.grad is not None  # by the MLM output)
               for n, p in model.named_parameters() if not n.startswith("pooler"))


def test_bad_input_is_a_clear_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="vocab_size=50"):
        model(torch.tensor([[1, 2, V]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="max_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len=64"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        model.generate(torch.zeros(1, 2, dtype=torch.long), 2, top_k=0)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(torch.zeros(2, 3, dtype=torch.long), 2, attention_mask=torch.ones(2, 4))
    enc = create_model("bert_tiny", vocab_size=20, max_len=8)
    with pytest.raises(ValueError, match="max_len=8"):
        enc(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="vocab_size=20"):
        enc(torch.full((1, 4), 20))
    with pytest.raises(ValueError, match="pos must be one of"):
        TextDecoder(pos="alibi")


def test_old_dropout_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning) as record:
        model = create_model("gpt_tiny", dropout=0.3, attn_drop=0.2)
    assert ["'dropout' is now called 'drop_rate'" in str(w.message) for w in record] == [1, 0]
    assert "'attn_drop' is now called 'attn_drop_rate'" in str(record[1].message)
    assert model.embed.drop.p == 0.3 and model.blocks.blocks[0].attn.attn_drop == 0.2
    with pytest.warns(DeprecationWarning, match="attn_drop_rate"):
        enc = TextEncoder(vocab_size=V, dim=32, depth=1, num_heads=4, attn_drop=0.0)
    assert enc.encoder.blocks[0].attn.attn_drop == 0.0
    with pytest.warns(DeprecationWarning, match="LSTMModel"):
        assert create_model("lstm_tiny", dropout=0.0).drop.p == 0.0
    with pytest.raises(ValueError, match="both dropout=0.1 and drop_rate=0.2"):
        create_model("seq2seq_tiny", dropout=0.1, drop_rate=0.2)
    with pytest.raises(ValueError, match="both"):
        TextDecoder(attn_drop=0.1, attn_drop_rate=0.1)
    # A factory's default under the new name gives way to a user's old name.
    from mmtx.models.compat import rename_options

    with pytest.warns(DeprecationWarning):
        opts = rename_options({"dropout": 0.0}, {"dropout": "drop_rate"}, "gpt_small")
    assert {**dict(drop_rate=0.1), **opts} == {"drop_rate": 0.0}
