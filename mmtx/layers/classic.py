"""The classic encoder-decoder attentions that self-attention is compared with.

`AdditiveAttention` (Bahdanau et al. 2015) scores a query against each key with a one-hidden-layer
network, v^T tanh(W_q q + W_k k); `MultiplicativeAttention` (Luong et al. 2015) with a dot product
("dot"), a bilinear form q^T W k ("general"), or the Transformer's dot product / sqrt(d)
("scaled"). Both: `forward(query, keys, values=None, mask=None) -> (context, weights)`.

query (B, Dq) or (B, Lq, Dq); keys (B, Lk, Dk); values (B, Lk, Dv), default the keys;
mask bool (True = may attend), (B, Lk) for a key mask or broadcastable to (B, Lq, Lk).
-> context (B, Dv) or (B, Lq, Dv), weights (B, Lk) or (B, Lq, Lk). A query with every key masked
gets zero weights and a zero context, as in `scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .attention import scaled_dot_product_attention


def _inputs(query, keys, values, mask, query_dim, key_dim):
    """Validate and lift a single query (B, Dq) to (B, 1, Dq); the mask to (B, Lq|1, Lk)."""
    if query.dim() not in (2, 3) or query.shape[-1] != query_dim:
        raise ValueError(f"query must be (B, {query_dim}) or (B, Lq, {query_dim}), "
                         f"got shape {tuple(query.shape)}")
    if keys.dim() != 3 or keys.shape[-1] != key_dim or keys.shape[0] != query.shape[0]:
        raise ValueError(f"keys must be (B={query.shape[0]}, Lk, {key_dim}), "
                         f"got shape {tuple(keys.shape)}")
    values = keys if values is None else values
    if values.dim() != 3 or values.shape[:2] != keys.shape[:2]:
        raise ValueError(f"values must be (B, Lk, Dv) with (B, Lk) = {tuple(keys.shape[:2])}, "
                         f"got shape {tuple(values.shape)}")
    single = query.dim() == 2
    query = query[:, None] if single else query  # (B, Lq, Dq)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
        target = (query.shape[0], query.shape[1], keys.shape[1])
        m = mask[:, None, :] if mask.dim() == 2 else mask  # a key mask (B, Lk) -> (B, 1, Lk)
        try:
            ok = torch.broadcast_shapes(m.shape, target) == target
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"mask must be (B, Lk) = {(target[0], target[2])} or broadcast to "
                             f"(B, Lq, Lk) = {target}, got shape {tuple(mask.shape)}")
        mask = m
    return query, values, mask, single


class AdditiveAttention(nn.Module):
    """Bahdanau attention: score(q, k) = v^T tanh(W_q q + W_k k).

    The keys' projection W_k k does not depend on the query, so a decoder can compute it once per
    source sentence; here it is recomputed per call, which keeps the interface that of
    `MultiplicativeAttention`.
    """

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int):
        super().__init__()
        for name, value in (("query_dim", query_dim), ("key_dim", key_dim),
                            ("hidden_dim", hidden_dim)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.query_dim, self.key_dim, self.hidden_dim = query_dim, key_dim, hidden_dim
        self.w_q = nn.Linear(query_dim, hidden_dim, bias=False)
        self.w_k = nn.Linear(key_dim, hidden_dim, bias=True)  # one bias serves the sum
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, query, keys, values=None, mask=None):
        query, values, mask, single = _inputs(query, keys, values, mask, self.query_dim,
                                              self.key_dim)
        hidden = torch.tanh(self.w_q(query)[:, :, None] + self.w_k(keys)[:, None])  # (B,Lq,Lk,h)
        scores = self.v(hidden).squeeze(-1)  # (B, Lq, Lk)
        dead = None
        if mask is not None:
            dead = ~mask.any(-1, keepdim=True)  # (B, Lq, 1) rows with no visible key
            scores = scores.masked_fill(~(mask | dead), float("-inf"))
        weights = scores.softmax(-1)
        if dead is not None:
            weights = weights.masked_fill(dead, 0.0)
        context = weights @ values  # (B, Lq, Dv)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)


class MultiplicativeAttention(nn.Module):
    """Luong attention. mode "dot": q.k; "general": q^T W k; "scaled": q.k / sqrt(key_dim).

    "dot" and "scaled" have no weights and need query_dim == key_dim; "general" maps the keys to
    the query's width, so the two may differ.
    """

    MODES = ("dot", "general", "scaled")

    def __init__(self, query_dim: int, key_dim: int, mode: str = "general"):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {list(self.MODES)}, got {mode!r}")
        if mode != "general" and query_dim != key_dim:
            raise ValueError(f"mode {mode!r} needs query_dim == key_dim, got query_dim="
                             f"{query_dim}, key_dim={key_dim} (use mode='general')")
        self.query_dim, self.key_dim, self.mode = query_dim, key_dim, mode
        self.w = nn.Linear(key_dim, query_dim, bias=False) if mode == "general" else None

    def forward(self, query, keys, values=None, mask=None):
        query, values, mask, single = _inputs(query, keys, values, mask, self.query_dim,
                                              self.key_dim)
        k = self.w(keys) if self.w is not None else keys  # (B, Lk, Dq)
        scale = 1.0 / math.sqrt(self.key_dim) if self.mode == "scaled" else 1.0
        context, weights = scaled_dot_product_attention(query, k, values, mask=mask, scale=scale,
                                                        return_weights=True)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)
