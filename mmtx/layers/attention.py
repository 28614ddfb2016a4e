"""Scaled dot-product attention and the one `Attention` module every mmtx model is built from.

`Attention` serves self, causal and cross attention (cross when `context` is passed), grouped-query
attention (`num_kv_heads < num_heads`), rotary positions and incremental decoding with a KV cache.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import fused_attn_enabled, use_fused_attn  # noqa: F401  (use_fused_attn re-exported)
from .local import local_attention
from .masks import in_window
from .sdpa import _prepare_mask, scaled_dot_product_attention  # noqa: F401  (the one kernel)


class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    Storage grows by doubling, so appending one token is amortised O(1) instead of the
    O(L) copy that `torch.cat` on every step costs. The in-place writes are for inference; when
    autograd records the keys (training through a cache), the cache concatenates instead, because
    a later in-place write would corrupt the keys saved for the backward pass.
    """

    def __init__(self):
        self._k = self._v = None
        self.length = 0
        # The block's cross-attention keys and values (B, Hkv, Lctx, D): the context does not
        # change while decoding, so they are projected on the first step only.
        self.context: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor):
        """Append k, v (B, Hkv, T, D); return all keys and values (B, Hkv, length, D)."""
        t = k.shape[-2]
        if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
            if self._k is not None:
                k = torch.cat([self._k[..., :self.length, :], k], dim=-2)  # (B, Hkv, len+T, D)
                v = torch.cat([self._v[..., :self.length, :], v], dim=-2)
            self._k, self._v, self.length = k, v, k.shape[-2]
            return k, v
        if self._k is None:
            self._k, self._v = k.new_empty(*k.shape[:-2], max(2 * t, 16), k.shape[-1]), \
                v.new_empty(*v.shape[:-2], max(2 * t, 16), v.shape[-1])
        elif self.length + t > self._k.shape[-2]:
            cap = max(2 * self._k.shape[-2], self.length + t)
            self._k = torch.cat([self._k, self._k.new_empty(*self._k.shape[:-2],
                                 cap - self._k.shape[-2], self._k.shape[-1])], dim=-2)
            self._v = torch.cat([self._v, self._v.new_empty(*self._v.shape[:-2],
                                 cap - self._v.shape[-2], self._v.shape[-1])], dim=-2)
        self._k[..., self.length:self.length + t, :] = k
        self._v[..., self.length:self.length + t, :] = v
        self.length += t
        return self._k[..., :self.length, :], self._v[..., :self.length, :]

    def reorder(self, index: torch.Tensor) -> None:
        """Select batch rows (beam search keeps the surviving beams)."""
        if self._k is not None:
            self._k, self._v = self._k[index], self._v[index]
        if self.context is not None:
            self.context = tuple(t[index] for t in self.context)


class Attention(nn.Module):
    """Multi-head attention: self (default), causal (`causal=True`), cross (pass `context`).

    x (B, Lq, dim), context (B, Lk, context_dim) -> (B, Lq, dim) [, weights (B, H, Lq, Lk)].
    `mask`: bool/float, broadcastable to (B, H, Lq, Lk). `rope`: a callable
    `rope(q, k, offset) -> (q, k)` applied per head (see `RotaryEmbedding`). `cache`: a `KVCache`
    holding earlier positions' keys and values; with a context, it keeps the context's keys and
    values from the first call and reuses them (one cache per decoding of one context).
    `window`: sliding-window self-attention, query i sees key j when |i - j| < window (causal:
    0 <= i - j < window), run block by block by `local_attention` (linear in length) unless a
    mask, a cache, attention weights or attention dropout ask for the dense path with the same
    window as a mask.
    `lsa`: Locality Self-Attention (Lee et al., 2021, "Vision Transformer for Small-Size
    Datasets"): a token may not attend to itself (the diagonal is masked; with a cache the
    queries are the last positions), and each head's scores are scaled by a learned factor, the
    inverse of the paper's temperature, initialised at 1/sqrt(head_dim) as in the paper's code,
    so training starts from ordinary attention minus the diagonal. Self-attention only.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        *,
        context_dim: int | None = None,
        num_kv_heads: int | None = None,
        qkv_bias: bool = False,
        proj_bias: bool = True,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        window: int | None = None,
        lsa: bool = False,
    ):
        super().__init__()
        if window is not None and (not isinstance(window, int) or window <= 0):
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        self.window = window
        if dim % num_heads:
            raise ValueError(f"dim must be divisible by num_heads, got dim={dim}, "
                             f"num_heads={num_heads}")
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads must divide num_heads={num_heads}, "
                             f"got {num_kv_heads}")
        self.dim, self.num_heads, self.num_kv_heads = dim, num_heads, num_kv_heads
        self.head_dim = dim // num_heads
        self.kv_dim = num_kv_heads * self.head_dim
        self.context_dim = context_dim
        # Self-attention keeps q, k, v in one matmul (as timm and nn.MultiheadAttention do);
        # a context of another width needs its own k, v projection.
        if context_dim is None:
            self.qkv = nn.Linear(dim, dim + 2 * self.kv_dim, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * self.kv_dim, bias=qkv_bias)
        # Per-head LayerNorm on q and k (ViT-22B): keeps attention logits from growing.
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_drop)
        if lsa and context_dim is not None:
            raise ValueError("lsa (Locality Self-Attention) is for self-attention; got "
                             f"context_dim={context_dim}")
        # LSA's learned per-head scale, 1 / temperature; 1-D, so the optimiser does not decay it
        self.lsa_scale = nn.Parameter(torch.full((num_heads,), self.head_dim ** -0.5)) \
            if lsa else None

    def _project(self, x, context, with_kv: bool = True):
        """q (B, Lq, dim), k, v (B, Lk, kv_dim); with_kv=False: q, None, None (cached context)."""
        if context is None:
            return self.qkv(x).split([self.dim, self.kv_dim, self.kv_dim], dim=-1)
        if context.shape[-1] != (self.context_dim or self.dim):
            raise ValueError(f"context must have last dim {self.context_dim or self.dim}, "
                             f"got shape {tuple(context.shape)}")
        if self.context_dim is None:  # same-width cross attention reuses the fused weight
            w_q, w_kv = self.qkv.weight.split([self.dim, 2 * self.kv_dim])
            b_q, b_kv = (None, None) if self.qkv.bias is None else \
                self.qkv.bias.split([self.dim, 2 * self.kv_dim])
            q = F.linear(x, w_q, b_q)
            kv = F.linear(context, w_kv, b_kv) if with_kv else None
        else:
            q, kv = self.q(x), self.kv(context) if with_kv else None
        return (q, None, None) if kv is None else (q, *kv.split(self.kv_dim, dim=-1))

    def forward(self, x, context=None, mask=None, causal=False, rope=None, cache=None,
                return_attn=False):
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, L, {self.dim}), got shape {tuple(x.shape)}")
        if rope is not None and context is not None:
            raise ValueError("rope is for self-attention; got it together with a context")
        B, L, _ = x.shape
        cached_context = context is not None and cache is not None and cache.context is not None
        q, k, v = self._project(x, context, with_kv=not cached_context)
        q = self.q_norm(q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2))  # (B,H,L,D)
        if cached_context:
            k, v = cache.context  # (B, Hkv, Lk, D)
        else:
            k = self.k_norm(k.view(B, -1, self.num_kv_heads, self.head_dim).transpose(1, 2))
            v = v.view(B, -1, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B,Hkv,Lk,D)
        if rope is not None:
            q, k = rope(q, k, offset=cache.length if cache is not None else 0)
        if cache is not None and context is not None:
            cache.context = (k, v)
        elif cache is not None:
            k, v = cache.update(k, v)  # (B, Hkv, past + L, D)
        if self.num_kv_heads != self.num_heads:  # GQA: each kv head serves a group of q heads
            rep = self.num_heads // self.num_kv_heads
            k = k.repeat_interleave(rep, dim=1)  # (B, H, Lk, D)
            v = v.repeat_interleave(rep, dim=1)
        dropout_p = self.attn_drop if self.training else 0.0
        scale = None
        if self.lsa_scale is not None:
            if context is not None:
                raise ValueError(f"lsa is for self-attention; got a context of shape "
                                 f"{tuple(context.shape)}")
            # (q * s) k^T = s q k^T: the per-head scale rides on q, the kernel scales by 1
            q, scale = q * self.lsa_scale.to(q.dtype)[:, None, None], 1.0  # (B, H, L, D)
            mask = _fold_mask(mask, q, k, _offsets(q, k) != 0)  # no query sees its own key
        if self.window is not None and context is not None:
            raise ValueError(f"window={self.window} is for self-attention; got a context of "
                             f"shape {tuple(context.shape)}")
        if self.window is not None and mask is None and cache is None and not return_attn \
                and dropout_p == 0.0:
            out, weights = local_attention(q, k, v, self.window, causal=causal), None
        else:
            if self.window is not None:
                mask = self._window_mask(mask, q, k, causal)
            out = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal,
                                               dropout_p=dropout_p, scale=scale,
                                               return_weights=return_attn)
            out, weights = out if return_attn else (out, None)
        out = out.transpose(1, 2).reshape(B, L, self.dim)  # (B, L, H*D)
        out = self.proj_drop(self.proj(out))
        return (out, weights) if return_attn else out

    def _window_mask(self, mask, q, k, causal):
        """The sliding window as a (Lq, Lk) bool mask, folded into `mask`."""
        return _fold_mask(mask, q, k, in_window(_offsets(q, k), self.window, causal))


def _offsets(q, k) -> torch.Tensor:
    """(Lq, Lk) query minus key position; the queries are the last Lq of the Lk positions
    (bottom-right aligned, as with a KV cache)."""
    lq, lk = q.shape[-2], k.shape[-2]
    return torch.arange(lk - lq, lk, device=q.device)[:, None] \
        - torch.arange(lk, device=q.device)[None, :]


def _fold_mask(mask, q, k, allowed: torch.Tensor):
    """The caller's `mask` (validated first) restricted to `allowed` (Lq, Lk) bool."""
    mask = _prepare_mask(mask, q, k, False)
    if mask is None:
        return allowed
    return (mask & allowed) if mask.dtype == torch.bool else \
        mask.masked_fill(~allowed, float("-inf"))
