"""Text models on the shared layers: BERT-style encoder, GPT-style decoder, encoder-decoder.

Every attention here is `mmtx.layers.Attention` (via `Encoder` / `Decoder`). Hugging Face GPT-2
and BERT checkpoints convert with `from_hf_gpt2` / `from_hf_bert` (reading them:
`convert/hf_text.py`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import (
    Decoder,
    Encoder,
    RotaryEmbedding,
    Transformer,
    make_act,
    sinusoidal_encoding,
)
from .compat import rename_options, renamed_options
from .convert.hf_text import bert_kwargs, gpt2_kwargs, load_bert_weights, load_gpt2_weights
from .decoding import DecodeState, check_sampling_args, decode, trim_finished
from .examples import register_example, tokens_to_logits
from .registry import register_model

POSITIONS = ("learned", "sinusoidal", "rope")
# The old spellings of the dropout options, still read from configs (see compat.py).
_RENAMED = {"dropout": "drop_rate", "attn_drop": "attn_drop_rate"}


def check_ids(ids: torch.Tensor, vocab_size: int, name: str = "ids") -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype.is_floating_point:
        got = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be an integer tensor (B, L), got {got}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"{name} must lie in [0, vocab_size={vocab_size}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


def key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, Lk) 1/True on real tokens -> bool (B, 1, 1, Lk) for attention; None if no padding."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class TextEmbedding(nn.Module):
    """Token + position (+ token type) embeddings, then optional LayerNorm (BERT) and dropout.

    positions: "learned" (a table, GPT-2/BERT), "sinusoidal" (fixed) or "rope" (none added here;
    the attention rotates q and k instead). `forward(ids, positions)` takes explicit positions so
    that left-padded rows can start counting at their first real token.
    """

    def __init__(self, vocab_size: int, dim: int, max_len: int, *, pos: str = "learned",
                 type_vocab_size: int = 0, norm: bool = False, norm_eps: float = 1e-12,
                 drop_rate: float = 0.0):
        super().__init__()
        if pos not in POSITIONS:
            raise ValueError(f"pos must be one of {POSITIONS}, got {pos!r}")
        self.vocab_size, self.max_len, self.pos_kind = vocab_size, max_len, pos
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim) if pos == "learned" else None
        if pos == "sinusoidal":
            self.register_buffer("pos_table", sinusoidal_encoding(max_len, dim), persistent=False)
        self.types = nn.Embedding(type_vocab_size, dim) if type_vocab_size else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else nn.Identity()
        self.drop = nn.Dropout(drop_rate)

    def check(self, ids: torch.Tensor, extra: int = 0) -> None:
        """ids (B, L) in range, and L + `extra` (tokens cached or still to come) positions."""
        check_ids(ids, self.vocab_size)  # first: a 1-D `ids` has no length to read
        length = ids.shape[1] + extra
        if self.pos_kind != "rope" and length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the position table "
                             f"(max_len={self.max_len})")

    def forward(self, ids, positions=None, token_type_ids=None):
        x = self.tok(ids)  # (B, L, dim)
        if self.pos_kind != "rope":
            if positions is None:
                positions = torch.arange(ids.shape[1], device=ids.device)
            x = x + (self.pos(positions) if self.pos is not None else self.pos_table[positions])
        if self.types is not None:
            x = x + self.types(torch.zeros_like(ids) if token_type_ids is None else token_type_ids)
        return self.drop(self.norm(x))


def _init_text(module: nn.Module, std: float = 0.02) -> None:
    # GPT-2 / BERT init: N(0, 0.02) for every matrix and embedding, zero biases, unit norms.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class MLMHead(nn.Module):
    """BERT's masked-LM head: dense -> act -> LayerNorm -> tied decoder + bias."""

    def __init__(self, dim: int, embedding: nn.Embedding, act: str, norm_eps: float):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = make_act(act)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.embedding = [embedding]  # a list, so the tied weight is not registered twice
        self.bias = nn.Parameter(torch.zeros(embedding.num_embeddings))

    def forward(self, x):
        return nn.functional.linear(self.norm(self.act(self.dense(x))),
                                    self.embedding[0].weight, self.bias)


POOLS = ("cls", "mean", "argmax", "eos", "last")


class TextEncoder(nn.Module):
    """Bidirectional (BERT-style) encoder with a masked-LM head and a classification head.

    ids (B, L) [+ attention_mask (B, L) 1 on real tokens, token_type_ids (B, L)] ->
    `forward_features` (B, L, dim); `forward_mlm` (B, L, vocab); `forward_head` (B, num_classes).
    `forward` returns class logits when num_classes > 0, else MLM logits.
    norm_first=False is BERT's post-norm (then the embeddings are normalised and there is no
    final norm). causal=True masks attention to later tokens (CLIP's text tower).
    pool: "cls" (the first token, through a tanh pooler as BERT), "mean" (over real tokens),
    "eos" (the first `eos_id`: CLIP's end-of-text token), "argmax" (the largest token id, where
    the end-of-text id is the largest: open_clip, old HF CLIP configs) or "last".
    drop_rate: dropout on embeddings, residual branches and before the classifier.
    """

    @renamed_options(**_RENAMED)
    def __init__(self, vocab_size: int = 30522, max_len: int = 512, dim: int = 256,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, *,
                 pos: str = "learned", type_vocab_size: int = 0, norm_first: bool = True,
                 norm_eps: float = 1e-12, act: str = "gelu", drop_rate: float = 0.1,
                 attn_drop_rate: float = 0.1, drop_path_rate: float = 0.0, num_classes: int = 0,
                 pool: str = "cls", mlm_head: bool = True, pooler: bool = True,
                 causal: bool = False, eos_id: int = 2, layer_scale: float | None = None):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.num_classes, self.pool, self.eos_id = num_classes, pool, eos_id
        self.embed = TextEmbedding(vocab_size, dim, max_len, pos=pos,
                                   type_vocab_size=type_vocab_size, norm=not norm_first,
                                   norm_eps=norm_eps, drop_rate=drop_rate)
        self.rope = RotaryEmbedding(dim // num_heads) if pos == "rope" else None
        self.encoder = Transformer(depth, dim, num_heads, mlp_ratio, causal=causal,
                                   norm_first=norm_first, final_norm=norm_first,
                                   norm_eps=norm_eps, act=act, qkv_bias=True,
                                   layer_scale=layer_scale, attn_drop=attn_drop_rate,
                                   proj_drop=drop_rate, drop_path=drop_path_rate)
        self.mlm = MLMHead(dim, self.embed.tok, act, norm_eps) if mlm_head else None
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh()) \
            if pooler and pool == "cls" else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes else None
        self.init_weights()

    def init_weights(self):
        _init_text(self)

    def forward_features(self, ids, attention_mask=None, token_type_ids=None,
                         return_hidden=False):
        self.embed.check(ids)
        x = self.embed(ids, token_type_ids=token_type_ids)
        return self.encoder(x, mask=key_mask(attention_mask), rope=self.rope,
                            return_hidden=return_hidden)

    def forward_mlm(self, ids, attention_mask=None, token_type_ids=None):
        if self.mlm is None:
            raise ValueError("this TextEncoder was built with mlm_head=False")
        return self.mlm(self.forward_features(ids, attention_mask, token_type_ids))

    def pooled(self, x, attention_mask=None, ids=None):
        """(B, L, dim) -> (B, dim) by `pool`; "eos" and "argmax" read the token `ids` (B, L)."""
        if self.pool == "cls":
            return self.pooler(x[:, 0])
        if self.pool == "last":
            return x[:, -1]
        if self.pool in ("eos", "argmax"):
            if ids is None:
                raise ValueError(f"pool={self.pool!r} needs the token ids")
            # A row without eos pools its first token, as HF and open_clip do.
            at = (ids == self.eos_id).int().argmax(-1) if self.pool == "eos" else ids.argmax(-1)
            return x[torch.arange(len(x), device=x.device), at]  # (B, dim)
        if attention_mask is None:
            return x.mean(1)
        m = attention_mask.to(x.dtype)[..., None]  # (B, L, 1)
        return (x * m).sum(1) / m.sum(1).clamp(min=1)

    def forward_head(self, x, attention_mask=None, ids=None):
        if self.head is None:
            raise ValueError("this TextEncoder was built with num_classes=0 (no classifier)")
        return self.head(self.head_drop(self.pooled(x, attention_mask, ids)))

    def forward(self, ids, attention_mask=None, token_type_ids=None):
        if self.head is None:
            return self.forward_mlm(ids, attention_mask, token_type_ids)
        x = self.forward_features(ids, attention_mask, token_type_ids)
        return self.forward_head(x, attention_mask, ids)


class TextDecoder(nn.Module):
    """GPT-style causal language model with tied input/output embeddings; with
    cross_attention=True every block also attends to a `context` (B, M, context_dim or dim):
    an encoder's output (Seq2Seq) or an image's patch tokens (ImageCaptioner).

    ids (B, L) [+ attention_mask (B, L), 1 on real tokens, for left padding; context, and
    context_mask (B, M) 1 on real context tokens] -> logits (B, L, V).
    `generate` decodes with the KV cache of `mmtx.layers.Transformer.new_cache()`; the context's
    cross-attention keys and values are projected on the first step only.
    norm_first=False is the original Transformer's post-norm (no final norm then).
    """

    @renamed_options(**_RENAMED)
    def __init__(self, vocab_size: int = 50257, max_len: int = 1024, dim: int = 256,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0, *,
                 pos: str = "learned", norm_first: bool = True, norm_eps: float = 1e-5,
                 act: str = "gelu_tanh", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, tie_weights: bool = True,
                 cross_attention: bool = False, context_dim: int | None = None):
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.cross_attention = cross_attention
        self.embed = TextEmbedding(vocab_size, dim, max_len, pos=pos, drop_rate=drop_rate)
        self.rope = RotaryEmbedding(dim // num_heads) if pos == "rope" else None
        self.blocks = Decoder(depth, dim, num_heads, mlp_ratio, cross_attention=cross_attention,
                              context_dim=context_dim if context_dim != dim else None,
                              norm_first=norm_first, final_norm=norm_first, norm_eps=norm_eps,
                              act=act, qkv_bias=True, attn_drop=attn_drop_rate,
                              proj_drop=drop_rate, drop_path=drop_path_rate)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.init_weights()
        if tie_weights:  # GPT-2 ties the output projection to the token embedding
            self.lm_head.weight = self.embed.tok.weight

    def init_weights(self):
        _init_text(self)
        # GPT-2: residual projections scaled by 1/sqrt(number of residual branches) so the
        # residual stream's variance does not grow with depth.
        projs = [b.attn.proj for b in self.blocks.blocks] + \
            [b.mlp.fc2 for b in self.blocks.blocks] + \
            [b.cross_attn.proj for b in self.blocks.blocks if b.cross_attn is not None]
        for lin in projs:
            nn.init.normal_(lin.weight, std=0.02 / len(projs) ** 0.5)

    def _check_context(self, context, batch: int):
        if context is None and self.cross_attention:
            raise ValueError("context must be given: this TextDecoder has cross_attention=True")
        if context is not None and not self.cross_attention:
            raise ValueError("context given to a TextDecoder built with cross_attention=False")
        if context is not None and (context.dim() != 3 or context.shape[0] != batch):
            raise ValueError(f"context must be (B={batch}, M, dim), got shape "
                             f"{tuple(context.shape)}")

    def forward_features(self, ids, attention_mask=None, positions=None, cache=None,
                         context=None, context_mask=None, return_attn=False,
                         return_hidden=False):
        """Hidden states (B, L, dim) [, Intermediates with return_attn / return_hidden]. With
        left padding, positions default to counts of real tokens so that each row's first real
        token is at position 0."""
        if positions is None and attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            positions = positions[:, -ids.shape[1]:]
        x = self.embed(ids, positions)
        return self.blocks(x, context=context, mask=key_mask(attention_mask),
                           context_mask=key_mask(context_mask), rope=self.rope, cache=cache,
                           return_attn=return_attn, return_hidden=return_hidden)

    def forward(self, ids, attention_mask=None, positions=None, cache=None, context=None,
                context_mask=None):
        self.embed.check(ids, extra=cache[0].length if cache else 0)
        self._check_context(context, ids.shape[0])
        return self.lm_head(self.forward_features(ids, attention_mask, positions, cache,
                                                  context, context_mask))

    def new_cache(self):
        return self.blocks.new_cache()

    def _next_logits(self, ids, attention_mask, positions, cache, **row_inputs):
        h = self.forward_features(ids, attention_mask, positions, cache, **row_inputs)
        return self.lm_head(h[:, -1])  # (B, V)

    @torch.no_grad()
    def generate(self, ids, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 eos_id: int | None = None, use_cache: bool = True, attention_mask=None,
                 generator: torch.Generator | None = None, *, context=None, context_mask=None,
                 beam_width: int = 1, length_penalty: float = 1.0):
        """Continue `ids` (B, L) by up to `max_new_tokens`; returns (B, L + new) token ids.

        temperature 0 is greedy. Batches of prompts of different lengths are left-padded, with
        attention_mask (B, L) 0 on the padding. Once a row produces `eos_id` it is filled with
        eos_id; decoding stops when every row has (the rest is eos-filled too). `context`
        (B, M, dim) [+ context_mask (B, M)] is what the cross-attention reads. beam_width > 1
        is beam search (scores ranked by length ** length_penalty; sampling options unused).
        """
        check_sampling_args(temperature, top_k, top_p)
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if not isinstance(beam_width, int) or beam_width < 1:
            raise ValueError(f"beam_width must be a positive int, got {beam_width!r}")
        if beam_width > 1 and (top_k is not None or top_p is not None):
            raise ValueError("top_k / top_p are for sampling; beam search (beam_width > 1) "
                             "takes neither")
        self.embed.check(ids, extra=max_new_tokens)
        if ids.shape[1] == 0:
            raise ValueError("ids: expected a prompt of at least one token (e.g. bos) per row, "
                             f"got an empty one, shape {tuple(ids.shape)}")
        self._check_context(context, ids.shape[0])
        if attention_mask is not None:
            if attention_mask.shape != ids.shape:
                raise ValueError(f"attention_mask must have the shape of ids {tuple(ids.shape)}"
                                 f", got {tuple(attention_mask.shape)}")
            attention_mask = attention_mask.bool()
            if bool(attention_mask.all()):
                attention_mask = None  # no padding: skip the mask on every step
        state = DecodeState(self._next_logits, ids, attention_mask,
                            self.new_cache() if use_cache else None,
                            context=context, context_mask=context_mask)
        new = decode(state, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                     eos_id=eos_id, generator=generator, beam_width=beam_width,
                     length_penalty=length_penalty)
        out = torch.cat([ids, new], dim=1)
        if eos_id is not None and new.shape[1] < max_new_tokens:
            out = torch.cat([out, out.new_full((len(out), max_new_tokens - new.shape[1]),
                                               eos_id)], dim=1)
        return out


# Seq2Seq's state-dict names before it was built on TextDecoder, and today's.
_OLD_SEQ2SEQ_KEYS = (("tgt_embed.", "decoder.embed."),
                     ("decoder.blocks.", "decoder.blocks.blocks."),
                     ("decoder.norm.", "decoder.blocks.norm."), ("lm_head.", "decoder.lm_head."))


class Seq2Seq(nn.Module):
    """The original Transformer: an encoder, then a `TextDecoder` with cross-attention to it.

    src (B, S) [+ src_mask (B, S)], tgt (B, T) (starting with bos) -> logits (B, T, tgt_vocab).
    `generate(src, max_new_tokens, beam_width=1)` is greedy, wider is beam search; both run
    TextDecoder.generate with the encoder output as context.
    """

    @renamed_options(**_RENAMED)
    def __init__(self, vocab_size: int = 1000, max_len: int = 256, dim: int = 256,
                 depth: int = 3, num_heads: int = 4, mlp_ratio: float = 4.0, *,
                 decoder_depth: int | None = None, tgt_vocab_size: int | None = None,
                 pos: str = "learned", norm_first: bool = True, norm_eps: float = 1e-5,
                 act: str = "gelu", drop_rate: float = 0.1, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, bos_id: int = 1, eos_id: int = 2,
                 pad_id: int = 0):
        super().__init__()
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        kw = dict(norm_first=norm_first, norm_eps=norm_eps, act=act)
        drops = dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                     drop_path_rate=drop_path_rate)
        self.src_embed = TextEmbedding(vocab_size, dim, max_len, pos=pos, drop_rate=drop_rate)
        self.rope = RotaryEmbedding(dim // num_heads) if pos == "rope" else None
        self.encoder = Encoder(depth, dim, num_heads, mlp_ratio, final_norm=norm_first,
                               qkv_bias=True, attn_drop=attn_drop_rate, proj_drop=drop_rate,
                               drop_path=drop_path_rate, **kw)
        self.decoder = TextDecoder(tgt_vocab_size or vocab_size, max_len, dim,
                                   decoder_depth or depth, num_heads, mlp_ratio, pos=pos,
                                   cross_attention=True, **kw, **drops)
        self.init_weights()
        self.register_load_state_dict_pre_hook(_rename_old_seq2seq_keys)

    def init_weights(self):
        _init_text(self)  # plain N(0, 0.02) everywhere, the decoder included

    def encode(self, src, src_mask=None):
        self.src_embed.check(src)
        return self.encoder(self.src_embed(src), mask=key_mask(src_mask), rope=self.rope)

    def decode(self, tgt, memory, src_mask=None, cache=None, offset: int = 0):
        positions = torch.arange(offset, offset + tgt.shape[1], device=tgt.device)
        return self.decoder(tgt, positions=positions, cache=cache, context=memory,
                            context_mask=src_mask)

    def forward(self, src, tgt, src_mask=None):
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    @torch.no_grad()
    def generate(self, src, max_new_tokens: int, beam_width: int = 1, src_mask=None,
                 length_penalty: float = 1.0):
        """(B, S) -> (B, 1 + new): bos, then the decoded tokens (eos-filled after eos), up to
        the step where every row has produced eos."""
        start = src.new_full((src.shape[0], 1), self.bos_id)
        out = self.decoder.generate(start, max_new_tokens, temperature=0.0, eos_id=self.eos_id,
                                    context=self.encode(src, src_mask), context_mask=src_mask,
                                    beam_width=beam_width, length_penalty=length_penalty)
        return trim_finished(out, self.eos_id, start=1)


def _rename_old_seq2seq_keys(module, state_dict, prefix, *args):
    # Checkpoints written before Seq2Seq was built on TextDecoder still load.
    if prefix + "tgt_embed.tok.weight" not in state_dict:
        return
    for key in [k for k in state_dict if k.startswith(prefix)]:
        for old, new in _OLD_SEQ2SEQ_KEYS:
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)
                break


def _build(cls, defaults: dict, overrides: dict):
    # Old option names are renamed before the merge, so `dropout` replaces a default drop_rate.
    return cls(**{**defaults, **rename_options(overrides, _RENAMED, cls.__name__)})


@register_model(family="text", task="causal_lm")
def gpt_tiny(**overrides):
    """~0.8M params: a character-level GPT for CPU experiments."""
    return _build(TextDecoder, dict(vocab_size=256, max_len=256, dim=128, depth=4, num_heads=4),
                  overrides)


@register_model(family="text", task="causal_lm")
def gpt_small(**overrides):
    """GPT-2 small's shape (124M with the GPT-2 vocabulary)."""
    return _build(TextDecoder, dict(vocab_size=50257, max_len=1024, dim=768, depth=12,
                                    num_heads=12, drop_rate=0.1), overrides)


@register_model(family="text", task="masked_lm")
def bert_tiny(**overrides):
    """BERT-tiny's shape (2 layers, 128 wide), post-norm, with token types."""
    return _build(TextEncoder, dict(vocab_size=30522, max_len=512, dim=128, depth=2,
                                    num_heads=2, norm_first=False, type_vocab_size=2), overrides)


@register_model(family="text", task="masked_lm")
def bert_small(**overrides):
    """BERT-small's shape (4 layers, 512 wide), post-norm, with token types."""
    return _build(TextEncoder, dict(vocab_size=30522, max_len=512, dim=512, depth=4,
                                    num_heads=8, norm_first=False, type_vocab_size=2), overrides)


@register_model(family="text", task="seq2seq")
def seq2seq_tiny(**overrides):
    """A small encoder-decoder for the synthetic seq2seq tasks."""
    return _build(Seq2Seq, dict(vocab_size=64, max_len=128, dim=128, depth=2, num_heads=4),
                  overrides)


register_example("text", tokens_to_logits(max_len=16, dim=32, depth=1, num_heads=2))


# --- Hugging Face conversion (the reading of HF models is in convert/hf_text.py) --------------


def from_hf_gpt2(hf_model) -> TextDecoder:
    """A `TextDecoder` with the weights of a `GPT2LMHeadModel` or `GPT2Model`.

    Logits and hidden states agree with the HF model to 1e-4 (fp32). A bare GPT2Model has no
    separate head, so the converted model ties its output to the token embedding, as GPT-2 does.
    """
    model = TextDecoder(**gpt2_kwargs(hf_model))
    load_gpt2_weights(model, hf_model)
    return model.train(hf_model.training)


def from_hf_bert(hf_model) -> TextEncoder:
    """A `TextEncoder` (post-norm) with the weights of a `BertModel` or `BertForMaskedLM`.

    BertModel's pooler becomes the [CLS] pooler; BertForMaskedLM's head becomes the MLM head.
    """
    model = TextEncoder(**bert_kwargs(hf_model))
    load_bert_weights(model, hf_model)
    return model.train(hf_model.training)


__all__ = ["TextEmbedding", "TextEncoder", "TextDecoder", "Seq2Seq", "MLMHead",
           "from_hf_gpt2", "from_hf_bert"]
