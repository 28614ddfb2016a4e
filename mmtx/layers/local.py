"""Sliding-window (and Longformer global + local) attention computed block by block.

The sequence is cut into blocks of `window` queries. A query block can only see the key block
before it, its own and (bidirectional) the one after, so each block attends to 3 * window keys
(2 * window causal): time and memory grow linearly with the length, and no (L, L) matrix is ever
built. The key windows are strided views (`unfold`) of the padded keys, and many blocks go
through one fused attention call at once, the blocks taking the place of heads; a short loop over
chunks of blocks (about 4M scores each) caps the memory held at any moment. Global keys are
appended to every block's window; global queries get G dense rows.

Semantics match `sliding_window_mask` / `global_local_mask` exactly: query i sees key j when
|i - j| < window (causal: 0 <= i - j < window); a global position sees every key and is seen by
every query (causal: only keys j <= i).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .masks import in_window
from .sdpa import scaled_dot_product_attention

_CHUNK = 1 << 22  # scores per chunk of blocks (16 MiB in fp32)


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


def _attend(q, k, v, mask, scale):
    """softmax(q k^T * scale, where mask) v through the one kernel; every row has a visible key.
    mask (n, b, span) is viewed as (1, n, b, span): the kernel broadcasts it over BH."""
    return scaled_dot_product_attention(q, k, v, mask=mask[None], scale=scale)


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

    bh = math.prod(lead)  # batch dims flattened: the fused kernel wants (BH, n, b, E)
    qb = F.pad(q, (0, 0, 0, tail)).reshape(bh, nb, b, E)  # (BH, nb, b, E)
    right = tail if causal else tail + b
    kp = F.pad(k, (0, 0, b, right)).reshape(bh, -1, E)  # (BH, b + L + right, E)
    vp = F.pad(v, (0, 0, b, right)).reshape(bh, kp.shape[1], -1)
    # Strided views, no copy: key c of block n is position n*b - b + c.
    k_win = kp.unfold(1, span, b).transpose(-1, -2)  # (BH, nb, span, E)
    v_win = vp.unfold(1, span, b).transpose(-1, -2)  # (BH, nb, span, Ev)

    dev = q.device

    # Within a block, query r and window key c are r - c + b positions apart, whatever the block.
    d = torch.arange(b, device=dev)[:, None] + b - torch.arange(span, device=dev)  # (b, span)
    visible = in_window(d, window, causal)

    def allowed(s, e):
        """(e - s, b, span) True where a query of blocks s..e-1 may see a key of its window."""
        kj = torch.arange(s, e, device=dev)[:, None] * b - b + torch.arange(span, device=dev)
        qi = torch.arange(s, e, device=dev)[:, None] * b + torch.arange(b, device=dev)
        # Padded queries (qi >= L) are dropped at the end; letting them see every real key of
        # their block keeps their softmax rows finite, so no NaN reaches the backward pass.
        return ((kj >= 0) & (kj < L))[:, None, :] & (visible | (qi >= L)[:, :, None])

    if pos is not None:
        # Global keys join every block's window, except where the window already holds them (a
        # key must enter the softmax once) or causality forbids it.
        G = pos.numel()
        kg = k[..., pos, :].reshape(bh, 1, G, E)  # (BH, 1, G, E)
        vg = v[..., pos, :].reshape(bh, 1, G, -1)  # (BH, 1, G, Ev)
        dg = torch.arange(nb * b, device=dev)[:, None] - pos[None, :]  # (nb*b, G)
        g_visible = in_window(dg, window, causal)
        g_allowed = (~g_visible & (dg >= 0)) if causal else ~g_visible

    # Blocks go through in chunks of about _CHUNK scores: each chunk is one fused attention
    # call with the blocks as its "heads", and no more than a chunk's scores exist at once.
    step = max(1, _CHUNK // (bh * b * (span + (0 if pos is None else G))))
    outs = []
    for s in range(0, nb, step):
        e = min(nb, s + step)
        kc, vc, mask = k_win[:, s:e], v_win[:, s:e], allowed(s, e)
        if pos is not None:
            n = e - s
            kc = torch.cat([kc, kg.expand(bh, n, G, E)], dim=-2)  # (BH, n, span + G, E)
            vc = torch.cat([vc, vg.expand(bh, n, G, vg.shape[-1])], dim=-2)
            mask = torch.cat([mask, g_allowed[s * b:e * b].reshape(n, b, G)], dim=-1)
        outs.append(_attend(qb[:, s:e], kc, vc, mask, scale))  # (BH, n, b, Ev)
    out = torch.cat(outs, dim=1).reshape(*lead, nb * b, -1)[..., :L, :]  # (..., L, Ev)
    if pos is None:
        return out

    # Global queries see every key (causal: j <= i): G dense rows, O(G * L).
    g_rows = (q[..., pos, :] * scale) @ k.transpose(-1, -2)  # (..., G, L)
    if causal:
        g_rows = g_rows.masked_fill(torch.arange(L, device=dev)[None, :] > pos[:, None],
                                    float("-inf"))
    g_out = g_rows.softmax(-1) @ v  # (..., G, Ev)
    return out.index_copy(-2, pos, g_out)  # (..., L, Ev)
