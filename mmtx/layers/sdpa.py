"""The one attention kernel: softmax(q k^T * scale + mask) v, fused (PyTorch's SDPA) or explicit.

Every attention in mmtx ends here: `Attention` (self, causal, cross), `local_attention`'s blocks
and the classic attentions, so a new kernel path is a change in one place. Re-exported as
`mmtx.layers.scaled_dot_product_attention` and `mmtx.layers.attention.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import fused_attn_enabled
from .masks import causal_mask


def _broadcastable(shape: tuple, target: tuple) -> bool:
    if len(shape) > len(target):
        return False
    return all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def _prepare_mask(mask, q, k, causal):
    """Validate `mask`, fold `causal` into it; returns a bool or float mask, or None."""
    lq, lk = q.shape[-2], k.shape[-2]
    if mask is not None:
        if mask.dtype != torch.bool and not mask.is_floating_point():
            # An int 0/1 mask would otherwise be *added* to the scores: wrong without an error.
            raise ValueError(f"mask must be bool (True = may attend) or float (added to the "
                             f"scores), got dtype {mask.dtype} with shape {tuple(mask.shape)}")
        target = (*torch.broadcast_shapes(q.shape[:-2], k.shape[:-2]), lq, lk)
        if not _broadcastable(tuple(mask.shape), target):
            raise ValueError(
                f"mask must broadcast to (..., Lq, Lk) = {target}, got shape {tuple(mask.shape)}"
            )
        if mask.is_floating_point():
            mask = mask.to(q.dtype)  # the fused kernel wants the query's dtype
    if not causal:
        return mask
    cm = causal_mask(lq, lk, device=q.device)  # (Lq, Lk); bottom-right aligned, unlike is_causal
    if mask is None:
        return cm
    if mask.dtype == torch.bool:
        return mask & cm
    return mask.masked_fill(~cm, float("-inf"))


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    return_weights: bool = False,
):
    """softmax(q k^T * scale + mask) v.

    q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev) -> out (..., Lq, Ev)
    [, weights (..., Lq, Lk)]. `mask`: bool (True = may attend) or float (added to the scores),
    broadcastable to (..., Lq, Lk). `causal` is bottom-right aligned (see `causal_mask`).

    A query whose keys are all masked gets zero weights and a zero output (not NaN).
    The fused kernel runs unless weights are asked for; both paths agree to 1e-5 in fp32.
    """
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must share the last dim, got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same length Lk, got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    # PyTorch's CPU kernels have no dropout: with dropout_p > 0 they fall back to a math path
    # that draws the mask with bernoulli_ and is 3-5x slower than the explicit path below.
    fused = fused_attn_enabled() and not return_weights and not (
        dropout_p > 0 and q.device.type == "cpu")
    if fused and causal and mask is None and q.shape[-2] <= 1:
        causal = False  # one query is the last position: it sees every key, no mask needed
    if fused and causal and mask is None and q.shape[-2] == k.shape[-2]:
        # Square causal: top-left and bottom-right alignment coincide, so the kernel's own
        # is_causal applies; it skips the masked half, and no row can be empty.
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale)
    # A causal mask alone leaves no row empty unless there are more queries than keys.
    may_die = mask is not None or q.shape[-2] > k.shape[-2]
    mask = _prepare_mask(mask, q, k, causal)
    dead = None  # (..., Lq, 1) True where a query row has no visible key
    if mask is not None and may_die:
        is_bool = mask.dtype == torch.bool
        dead = ~mask.any(-1, keepdim=True) if is_bool else torch.isneginf(mask).all(-1, True)
        if dead.device.type == "cpu" and not dead.any():
            # The fix-up below is two more passes over mask and output (as long as the kernel
            # itself at ViT sizes on CPU); asking first is free on CPU, a stall on a GPU.
            dead = None
        else:  # let dead rows attend anywhere, then zero them below
            mask = (mask | dead) if is_bool else mask.masked_fill(dead, 0.0)

    if fused:
        if mask is not None and mask.dim() < q.dim():
            # A 3-D mask with 4-D q sends PyTorch's CPU dispatch to its slow math fallback
            # (2-D and full-rank masks get the flash kernel); a view to full rank costs nothing.
            mask = mask.reshape((1,) * (q.dim() - mask.dim()) + tuple(mask.shape))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                             scale=scale)
        return out if dead is None else out.masked_fill(dead, 0.0)

    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else scores + mask
    weights = scores.softmax(-1)
    if dead is not None:
        weights = weights.masked_fill(dead, 0.0)
    out = _dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
    return (out, weights) if return_weights else out


def _dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout as F.dropout (each element kept with probability 1 - p, scaled by
    1 / (1 - p)); the mask comes from rand_like, which on CPU is about 4x faster than the
    bernoulli_ that F.dropout draws with."""
    if p >= 1.0:
        return torch.zeros_like(x)
    return x * (torch.rand_like(x) >= p).to(x.dtype).mul_(1.0 / (1.0 - p))
