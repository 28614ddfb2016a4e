"""Attention masks. Bool masks follow PyTorch: True = this query may attend to this key.

Every mask here is a dense (Lq, Lk) or (B, L) tensor: the reference patterns that the fast paths
(fused SDPA, block-wise `local_attention`) are tested against, and what the attention maps show.
"""

from __future__ import annotations

import torch


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def causal_mask(lq: int, lk: int | None = None, device=None) -> torch.Tensor:
    """(lq, lk) bool. Aligned bottom-right: query i sees keys j <= i + lk - lq.

    With lq == lk this is the usual lower triangle. With lq < lk (decoding with a KV cache, the
    queries are the *last* lq positions) the new tokens still see every cached key.
    """
    lk = lq if lk is None else lk
    _positive("lq", lq)
    _positive("lk", lk)
    i = torch.arange(lq, device=device)[:, None]
    j = torch.arange(lk, device=device)[None, :]
    return j <= i + (lk - lq)


def padding_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B, max_len) bool, True on real tokens (right padding).

    As a key mask for attention use `mask[:, None, None, :]`, broadcast to (B, heads, Lq, Lk).
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D (B,), got shape {tuple(lengths.shape)}")
    max_len = int(lengths.max()) if max_len is None else max_len
    if lengths.numel() and int(lengths.max()) > max_len:
        raise ValueError(f"lengths must be <= max_len={max_len}, got max {int(lengths.max())}")
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def in_window(offset: torch.Tensor, window: int, causal: bool = False) -> torch.Tensor:
    """The sliding-window rule, for every pattern and fast path that has one.

    `offset` holds query position minus key position (i - j), any shape; True where the query
    sees the key: |i - j| < window, or 0 <= i - j < window when causal.
    """
    return ((offset >= 0) & (offset < window)) if causal else (offset.abs() < window)


def sliding_window_mask(
    length: int, window: int, causal: bool = False, device=None
) -> torch.Tensor:
    """(length, length) bool. Query i sees key j when |i - j| < window.

    Causal: 0 <= i - j < window.
    window=1 is attention to oneself only; a bidirectional query sees at most 2*window - 1 keys.
    """
    _positive("length", length)
    _positive("window", window)
    d = torch.arange(length, device=device)[:, None] - torch.arange(length, device=device)[None, :]
    return in_window(d, window, causal)  # d (length, length): query minus key position


def global_local_mask(
    length: int, window: int, global_positions, causal: bool = False, device=None
) -> torch.Tensor:
    """(length, length) bool: the Longformer pattern, a sliding window plus global tokens.

    A global position attends to every key and every query attends to it (subject to `causal`).
    """
    mask = sliding_window_mask(length, window, causal=causal, device=device)
    g = torch.zeros(length, dtype=torch.bool, device=device)
    pos = torch.as_tensor(global_positions, dtype=torch.long, device=device).flatten()
    if pos.numel() and (int(pos.min()) < 0 or int(pos.max()) >= length):
        raise ValueError(
            f"global_positions must lie in [0, {length}), got {pos.tolist()}"
        )
    g[pos] = True
    mask = mask | g[:, None] | g[None, :]
    if causal:
        mask = mask & causal_mask(length, device=device)
    return mask
