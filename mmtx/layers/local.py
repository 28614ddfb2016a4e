"""Sliding-window (and Longformer global + local) attention computed block by block.

The sequence is cut into blocks of `window` queries. A query block can only see the key block
before it, its own and (bidirectional) the one after, so each block attends to 3 * window keys
(2 * window causal): time and memory grow linearly with the length, and no (L, L) matrix is ever
built. The key windows are strided views (`unfold`) of the padded keys, so all blocks go through
one batched matmul instead of a Python loop.

Semantics match `sliding_window_mask` / `global_local_mask` exactly: query i sees key j when
|i - j| < window (causal: 0 <= i - j < window); a global position sees every key and is seen by
every query (causal: only keys j <= i).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _check(q, k, v, window, global_positions):
    if not isinstance(window, int) or isinstance(window, bool) or window <= 0:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if q.dim() < 2 or q.shape != k.shape[:-1] + q.shape[-1:] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must both be (..., L, E) with equal shapes (local attention "
                         f"is self-attention), got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"v must be (..., L, Ev) with (..., L) = {tuple(k.shape[:-1])}, "
                         f"got v {tuple(v.shape)}")
    length = q.shape[-2]
    if global_positions is None:
        return None
    pos = torch.as_tensor(global_positions, dtype=torch.long, device=q.device).flatten()
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= length):
        raise ValueError(f"global_positions must lie in [0, {length}), got {pos.tolist()}")
    pos = torch.unique(pos)  # sorted, no repeats: a repeated key would be counted twice
    return pos if pos.numel() else None


def local_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: int,
    causal: bool = False,
    global_positions=None,
    scale: float | None = None,
) -> torch.Tensor:
    """Block-wise sliding-window attention. q, k (..., L, E), v (..., L, Ev) -> (..., L, Ev).

    Equal to `scaled_dot_product_attention(q, k, v, mask=global_local_mask(L, window, pos,
    causal))` (or `sliding_window_mask` without global positions), in O(L * window) time and
    memory plus O(L * G) for G global positions.
    """
    pos = _check(q, k, v, window, global_positions)
    L, E = q.shape[-2], q.shape[-1]
    lead = q.shape[:-2]
    scale = 1.0 / math.sqrt(E) if scale is None else scale
    b = min(window, L)  # block size; a window wider than the sequence is one dense block
    nb = -(-L // b)  # number of query blocks
    tail = nb * b - L  # padding after the last real query
    span = 2 * b if causal else 3 * b  # keys per block: previous, own [, next] block

    qb = F.pad(q * scale, (0, 0, 0, tail)).reshape(*lead, nb, b, E)  # (..., nb, b, E)
    right = tail if causal else tail + b
    kp = F.pad(k, (0, 0, b, right))  # (..., b + L + right, E)
    vp = F.pad(v, (0, 0, b, right))
    k_win = kp.unfold(-2, span, b)  # (..., nb, E, span): a view, key c of block n is n*b - b + c
    v_win = vp.unfold(-2, span, b).transpose(-1, -2)  # (..., nb, span, Ev)
    scores = qb @ k_win  # (..., nb, b, span)

    # Which (query, key) pairs of each block are allowed; the same for every batch and head.
    dev = q.device
    qi = (torch.arange(nb, device=dev)[:, None] * b + torch.arange(b, device=dev))[:, :, None]
    kj = (torch.arange(nb, device=dev)[:, None] * b - b + torch.arange(span, device=dev))[:, None]
    d = qi - kj  # (nb, b, span) query position minus key position
    in_window = ((d >= 0) & (d < window)) if causal else (d.abs() < window)
    real_key = (kj >= 0) & (kj < L)
    # Padded queries (qi >= L) are dropped at the end; letting them see every real key in their
    # blocks keeps their softmax rows finite, so no NaN reaches the backward pass.
    allowed = real_key & (in_window | (qi >= L))  # (nb, b, span)
    scores = scores.masked_fill(~allowed, float("-inf"))

    if pos is None:
        weights = scores.softmax(-1)
        out = weights @ v_win  # (..., nb, b, Ev)
        return out.reshape(*lead, nb * b, -1)[..., :L, :]  # (..., L, Ev)

    # Global keys: every query sees them, except where the window already holds them (a key
    # must enter the softmax once) or causality forbids it.
    kg, vg = k[..., pos, :], v[..., pos, :]  # (..., G, E), (..., G, Ev)
    g_scores = qb.reshape(*lead, nb * b, E) @ kg.transpose(-1, -2)  # (..., nb*b, G)
    qi_flat = torch.arange(nb * b, device=dev)[:, None]  # (nb*b, 1)
    dg = qi_flat - pos[None, :]  # (nb*b, G)
    g_in_window = ((dg >= 0) & (dg < window)) if causal else (dg.abs() < window)
    g_allowed = (~g_in_window & (dg >= 0)) if causal else ~g_in_window
    g_scores = g_scores.masked_fill(~g_allowed, float("-inf"))
    flat = scores.reshape(*lead, nb * b, span)  # (..., nb*b, span)
    weights = torch.cat([flat, g_scores], dim=-1).softmax(-1)  # (..., nb*b, span + G)
    w_local = weights[..., :span].reshape(*lead, nb, b, span)
    out = (w_local @ v_win).reshape(*lead, nb * b, -1) + weights[..., span:] @ vg  # (.., nb*b, Ev)
    out = out[..., :L, :]

    # Global queries see every key (causal: j <= i): G dense rows, O(G * L).
    g_rows = (q[..., pos, :] * scale) @ k.transpose(-1, -2)  # (..., G, L)
    if causal:
        g_rows = g_rows.masked_fill(torch.arange(L, device=dev)[None, :] > pos[:, None],
                                    float("-inf"))
    g_out = g_rows.softmax(-1) @ v  # (..., G, Ev)
    return out.index_copy(-2, pos, g_out)  # (..., L, Ev)
