"""Hugging Face GPT-2 / BERT interop: randomly initialised small configs, weights copied, 1e-4."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    BertConfig,
    BertForMaskedLM,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Model,
)

from mmtx.models.text import from_hf_bert, from_hf_gpt2  # noqa: E402

ATOL = 1e-4


def gpt2_config(**kw):
    return GPT2Config(**{**dict(vocab_size=97, n_positions=40, n_embd=48, n_layer=2, n_head=4,
                                bos_token_id=0, eos_token_id=0), **kw})


def bert_config(**kw):
    return BertConfig(**{**dict(vocab_size=97, max_position_embeddings=40, hidden_size=48,
                                num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=96), **kw})


@pytest.mark.parametrize("act", ["gelu_new", "gelu", "relu"])
def test_gpt2_logits_and_hidden_states_match(act):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(gpt2_config(activation_function=act, n_inner=80)).eval()
    model = from_hf_gpt2(hf).eval()
    ids = torch.randint(0, 97, (2, 17))
    ref = hf(ids, output_hidden_states=True)
    torch.testing.assert_close(model(ids), ref.logits, atol=ATOL, rtol=0)
    _, inter = model.forward_features(ids, return_hidden=True)
    # HF's last hidden state is after ln_f; ours are before the final norm.
    for ours, theirs in zip(inter.hidden[:-1], ref.hidden_states[:-1]):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.blocks.norm(inter.hidden[-1]), ref.hidden_states[-1],
                               atol=ATOL, rtol=0)


def test_gpt2_greedy_generation_matches_hf():
    torch.manual_seed(1)
    hf = GPT2LMHeadModel(gpt2_config()).eval()
    model = from_hf_gpt2(hf).eval()
    ids = torch.randint(1, 97, (1, 5))
    ref = hf.generate(ids, max_new_tokens=15, do_sample=False, min_new_tokens=15,
                      pad_token_id=0)
    assert torch.equal(model.generate(ids, 15, temperature=0), ref)


def test_gpt2_base_model_converts_tied():
    torch.manual_seed(2)
    hf = GPT2Model(gpt2_config()).eval()
    model = from_hf_gpt2(hf).eval()
    ids = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(model.forward_features(ids), hf(ids).last_hidden_state,
                               atol=ATOL, rtol=0)
    assert model.lm_head.weight is model.embed.tok.weight


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_bert_mlm_logits_and_hidden_states_match(act):
    torch.manual_seed(0)
    hf = BertForMaskedLM(bert_config(hidden_act=act)).eval()
    model = from_hf_bert(hf).eval()
    ids = torch.randint(0, 97, (3, 21))
    types = torch.randint(0, 2, (3, 21))
    mask = torch.ones(3, 21, dtype=torch.long)
    mask[1, 15:] = 0
    mask[2, 4:] = 0
    ref = hf(ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    torch.testing.assert_close(model.forward_mlm(ids, mask, types), ref.logits, atol=ATOL,
                               rtol=0)
    _, inter = model.forward_features(ids, mask, types, return_hidden=True)
    assert len(inter.hidden) == len(ref.hidden_states)
    for ours, theirs in zip(inter.hidden, ref.hidden_states):
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)


def test_bert_model_pooler_matches():
    torch.manual_seed(3)
    hf = BertModel(bert_config()).eval()
    model = from_hf_bert(hf).eval()
    ids = torch.randint(0, 97, (2, 11))
    ref = hf(ids)
    x = model.forward_features(ids)
    torch.testing.assert_close(x, ref.last_hidden_state, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.pooled(x), ref.pooler_output, atol=ATOL, rtol=0)


def test_unsupported_options_are_named():
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        from_hf_gpt2(GPT2LMHeadModel(gpt2_config(scale_attn_by_inverse_layer_idx=True)))
    with pytest.raises(ValueError, match="scale_attn_weights"):
        from_hf_gpt2(GPT2LMHeadModel(gpt2_config(scale_attn_weights=False)))
    with pytest.raises(ValueError, match="activation_function"):
        from_hf_gpt2(GPT2LMHeadModel(gpt2_config(activation_function="quick_gelu")))
    with pytest.raises(ValueError, match="is_decoder"):
        from_hf_bert(BertModel(bert_config(is_decoder=True)))
    with pytest.raises(ValueError, match="hidden_act"):
        from_hf_bert(BertModel(bert_config(hidden_act="gelu_10")))
    with pytest.raises(ValueError, match="GPT2LMHeadModel"):
        from_hf_gpt2(BertModel(bert_config()))
