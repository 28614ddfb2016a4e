"""The recurrent baseline: token embedding + nn.LSTM + a head (the Transformer's predecessor).

It reads a sequence one step at a time, so its per-step cost grows with the length however
parallel the hardware; the long-range recall experiment sets it against a Transformer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .compat import rename_options, renamed_options
from .examples import register_example, tokens_to_class
from .registry import register_model
from .text import check_ids

_RENAMED = {"dropout": "drop_rate"}  # the old spelling, still read from configs


class LSTMModel(nn.Module):
    """ids (B, L) -> per-token logits (B, L, num_classes or vocab), or (B, num_classes) with
    pool="last"/"mean" (sequence classification; attention_mask (B, L) marks real tokens).

    num_classes=0 makes it a language model over the vocabulary (output tied to the embedding
    when dim == hidden_dim). bidirectional=True reads both ways (then no LM use).
    drop_rate: dropout on the embeddings, between LSTM layers and before the head.
    """

    @renamed_options(**_RENAMED)
    def __init__(self, vocab_size: int = 256, dim: int = 128, hidden_dim: int = 256,
                 num_layers: int = 2, *, num_classes: int = 0, pool: str = "none",
                 drop_rate: float = 0.1, bidirectional: bool = False,
                 max_len: int | None = None):
        super().__init__()
        if pool not in ("none", "last", "mean"):
            raise ValueError(f"pool must be 'none', 'last' or 'mean', got {pool!r}")
        self.vocab_size, self.pool = vocab_size, pool
        self.max_len = max_len  # unused by the recurrence; kept so configs can share args
        self.embed = nn.Embedding(vocab_size, dim)
        self.drop = nn.Dropout(drop_rate)
        self.lstm = nn.LSTM(dim, hidden_dim, num_layers, batch_first=True,
                            dropout=drop_rate if num_layers > 1 else 0.0,
                            bidirectional=bidirectional)
        out_dim = hidden_dim * (2 if bidirectional else 1)
        self.head = nn.Linear(out_dim, num_classes or vocab_size)
        self.init_weights()
        if not num_classes and out_dim == dim:
            self.head.weight = self.embed.weight

    def init_weights(self):
        nn.init.normal_(self.embed.weight, std=0.02)
        for name, p in self.lstm.named_parameters():
            if "bias" in name:
                nn.init.zeros_(p)
                # Forget-gate bias 1 (Jozefowicz et al. 2015): remember by default, which is
                # what long-range recall needs early in training.
                n = p.shape[0] // 4
                p.data[n:2 * n] = 1.0
        nn.init.zeros_(self.head.bias)

    def forward_features(self, ids, attention_mask=None):
        check_ids(ids, self.vocab_size)
        x, _ = self.lstm(self.drop(self.embed(ids)))  # (B, L, hidden)
        return x

    def forward_head(self, x, attention_mask=None):
        if self.pool == "none":
            return self.head(self.drop(x))
        if self.pool == "mean":
            m = torch.ones_like(x[..., 0]) if attention_mask is None else \
                attention_mask.to(x.dtype)  # (B, L)
            x = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True).clamp(min=1)
        else:  # the state after the last real token
            last = (x.shape[1] - 1 if attention_mask is None
                    else attention_mask.long().sum(1) - 1)
            x = x[torch.arange(x.shape[0], device=x.device), last]  # (B, hidden)
        return self.head(self.drop(x))

    def forward(self, ids, attention_mask=None):
        return self.forward_head(self.forward_features(ids, attention_mask), attention_mask)


def _lstm(defaults: dict, overrides: dict) -> LSTMModel:
    # Old option names are renamed before the merge, as for the text models.
    return LSTMModel(**{**defaults, **rename_options(overrides, _RENAMED, "LSTMModel")})


@register_model(family="rnn", task="text_classification")
def lstm_small(**overrides):
    """A 2-layer, 256-wide LSTM (about the parameter count of gpt_tiny)."""
    return _lstm(dict(vocab_size=256, dim=128, hidden_dim=256, num_layers=2), overrides)


@register_model(family="rnn", task="text_classification")
def lstm_tiny(**overrides):
    """A 1-layer, 128-wide LSTM for quick CPU runs."""
    return _lstm(dict(vocab_size=256, dim=128, hidden_dim=128, num_layers=1), overrides)


register_example("rnn", tokens_to_class(dim=16, hidden_dim=16, pool="last"))
