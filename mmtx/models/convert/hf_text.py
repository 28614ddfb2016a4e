"""Reading Hugging Face GPT-2 / BERT models: their options as mmtx text-model arguments, and
their weights copied into a model built from those (how pretrained checkpoints load).

`mmtx.models.text.from_hf_gpt2` / `from_hf_bert` build the model in between; this module
imports no mmtx model, so the text models can import it. Only the model object is read: nothing
is downloaded here. An option mmtx cannot reproduce exactly raises ValueError naming it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Hugging Face activation names -> mmtx.layers activation names.
_HF_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
           "gelu_fast": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}


def _unsupported(model_name: str, options: dict) -> None:
    bad = {k: v for k, v in options.items() if v}
    if bad:
        raise ValueError(f"{model_name} option(s) not supported by mmtx: "
                         + ", ".join(f"{k}={v!r}" for k, v in bad.items()))


def _act(model_name: str, key: str, value) -> str:
    if not isinstance(value, str) or value not in _HF_ACT:
        raise ValueError(f"{model_name} option {key}={value!r} is not supported; expected one "
                         f"of {sorted(_HF_ACT)}")
    return _HF_ACT[value]


def _mlp_ratio(model_name: str, key: str, hidden: int, dim: int) -> float:
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # Block sizes its MLP as int(dim * mlp_ratio)
        raise ValueError(f"{model_name} option {key}={hidden} cannot be expressed as "
                         f"int(dim * mlp_ratio) with dim={dim}")
    return ratio


def _copy(dst: nn.Module, src: nn.Module, transpose: bool = False) -> None:
    """Copy weight (and bias) of `src` into `dst`; GPT-2's Conv1D stores weights (in, out)."""
    w = src.weight.detach()
    dst.weight.data.copy_(w.t() if transpose else w)
    if getattr(src, "bias", None) is not None:
        dst.bias.data.copy_(src.bias.detach())


def _core(hf_model, model_type: str, wrapper: str, part: str, names: str):
    """The base model inside `hf_model` (itself, or its `wrapper` attribute), checked to be
    a `model_type` model that has `part`; else a ValueError naming the accepted `names`."""
    core = getattr(hf_model, wrapper, hf_model)
    if getattr(hf_model.config, "model_type", None) != model_type or not hasattr(core, part):
        raise ValueError(f"hf_model must be a {names}, got {type(hf_model).__name__}")
    return core


def gpt2_kwargs(hf_model) -> dict:
    """`TextDecoder` arguments for a `GPT2LMHeadModel` / `GPT2Model`; ValueError on an option
    mmtx cannot reproduce."""
    core = _core(hf_model, "gpt2", "transformer", "h", "GPT2LMHeadModel or GPT2Model")
    cfg = hf_model.config
    _unsupported("GPT-2", {
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "add_cross_attention": cfg.add_cross_attention,
    })
    if not cfg.scale_attn_weights:  # mmtx attention always scales by 1/sqrt(head_dim)
        raise ValueError("GPT-2 option(s) not supported by mmtx: scale_attn_weights=False")
    dim = cfg.n_embd
    head = getattr(hf_model, "lm_head", None)
    return dict(
        vocab_size=cfg.vocab_size, max_len=cfg.n_positions, dim=dim, depth=cfg.n_layer,
        num_heads=cfg.n_head,
        mlp_ratio=_mlp_ratio("GPT-2", "n_inner", cfg.n_inner or 4 * dim, dim),
        norm_eps=cfg.layer_norm_epsilon, act=_act("GPT-2", "activation_function",
                                                  cfg.activation_function),
        drop_rate=cfg.resid_pdrop, attn_drop_rate=cfg.attn_pdrop,
        tie_weights=head is None or head.weight is core.wte.weight)


@torch.no_grad()
def load_gpt2_weights(model: nn.Module, hf_model) -> None:
    """Copy a GPT-2's weights into a `TextDecoder` built with `gpt2_kwargs(hf_model)`."""
    core = _core(hf_model, "gpt2", "transformer", "h", "GPT2LMHeadModel or GPT2Model")
    model.embed.drop.p = hf_model.config.embd_pdrop  # GPT-2 has its own embedding dropout
    _copy(model.embed.tok, core.wte)
    _copy(model.embed.pos, core.wpe)
    for block, h in zip(model.blocks.blocks, core.h):
        _copy(block.norm1, h.ln_1)
        _copy(block.attn.qkv, h.attn.c_attn, transpose=True)  # rows q, k, v in both
        _copy(block.attn.proj, h.attn.c_proj, transpose=True)
        _copy(block.norm2, h.ln_2)
        _copy(block.mlp.fc1, h.mlp.c_fc, transpose=True)
        _copy(block.mlp.fc2, h.mlp.c_proj, transpose=True)
    _copy(model.blocks.norm, core.ln_f)
    head = getattr(hf_model, "lm_head", None)
    if head is not None and head.weight is not core.wte.weight:
        _copy(model.lm_head, head)


def bert_kwargs(hf_model) -> dict:
    """`TextEncoder` arguments for a `BertModel` / `BertForMaskedLM`; ValueError on an option
    mmtx cannot reproduce."""
    core = _core(hf_model, "bert", "bert", "embeddings", "BertModel or BertForMaskedLM")
    cfg = hf_model.config
    pos_type = getattr(cfg, "position_embedding_type", "absolute")
    _unsupported("BERT", {
        "position_embedding_type": pos_type if pos_type != "absolute" else None,
        "is_decoder": cfg.is_decoder, "add_cross_attention": cfg.add_cross_attention,
    })
    cls = getattr(hf_model, "cls", None)
    if cls is not None and cls.predictions.decoder.weight is not \
            core.embeddings.word_embeddings.weight:
        raise ValueError("BERT option tie_word_embeddings=False is not supported by mmtx "
                         "(the MLM decoder is tied to the token embedding)")
    dim = cfg.hidden_size
    return dict(
        vocab_size=cfg.vocab_size, max_len=cfg.max_position_embeddings, dim=dim,
        depth=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
        mlp_ratio=_mlp_ratio("BERT", "intermediate_size", cfg.intermediate_size, dim),
        type_vocab_size=cfg.type_vocab_size, norm_first=False, norm_eps=cfg.layer_norm_eps,
        act=_act("BERT", "hidden_act", cfg.hidden_act), drop_rate=cfg.hidden_dropout_prob,
        attn_drop_rate=cfg.attention_probs_dropout_prob, mlm_head=cls is not None,
        pooler=getattr(core, "pooler", None) is not None)


@torch.no_grad()
def load_bert_weights(model: nn.Module, hf_model) -> None:
    """Copy a BERT's weights into a `TextEncoder` built with `bert_kwargs(hf_model)`."""
    core = _core(hf_model, "bert", "bert", "embeddings", "BertModel or BertForMaskedLM")
    emb = core.embeddings
    _copy(model.embed.tok, emb.word_embeddings)
    _copy(model.embed.pos, emb.position_embeddings)
    _copy(model.embed.types, emb.token_type_embeddings)
    _copy(model.embed.norm, emb.LayerNorm)
    for block, layer in zip(model.encoder.blocks, core.encoder.layer):
        att = layer.attention
        block.attn.qkv.weight.copy_(torch.cat([att.self.query.weight, att.self.key.weight,
                                               att.self.value.weight]))  # (3 * dim, dim)
        block.attn.qkv.bias.copy_(torch.cat([att.self.query.bias, att.self.key.bias,
                                             att.self.value.bias]))
        _copy(block.attn.proj, att.output.dense)
        _copy(block.norm1, att.output.LayerNorm)
        _copy(block.mlp.fc1, layer.intermediate.dense)
        _copy(block.mlp.fc2, layer.output.dense)
        _copy(block.norm2, layer.output.LayerNorm)
    pooler = getattr(core, "pooler", None)
    if pooler is not None:
        _copy(model.pooler[0], pooler.dense)
    cls = getattr(hf_model, "cls", None)
    if cls is not None:
        pred = cls.predictions
        _copy(model.mlm.dense, pred.transform.dense)
        _copy(model.mlm.norm, pred.transform.LayerNorm)
        model.mlm.bias.copy_(pred.bias)
