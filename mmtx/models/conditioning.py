"""The conditions of the image generators (DiT, U-Net): timestep, class label and caption -> the
conditioning vector c, and the caption tokens cross-attention reads.

This module is the one owner of classifier-free guidance's condition drop: `Conditioner` makes
a row unconditional (the null class and the null caption together) where its drop mask says so,
and in training mode draws that mask itself with probability `cond_drop` when none is given. A
training task that wants to draw the rows itself (for its own random stream) passes the mask as
the model's `cond_drop_mask` keyword; it never builds null conditions by hand.

The null conditions: class id `num_classes` (the extra row of `LabelEmbedding`), and a caption
with no real token, which reads a learned null context token instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import LabelEmbedding, TimestepEmbedding
from .text import TextEncoder, check_ids

TIME_EMBEDS = ("mmtx", "diffusers")
# The timestep frequency layout of each `time_embed`: diffusers' DiT uses `Timesteps(256,
# flip_sin_to_cos=True, downscale_freq_shift=1)`.
_TIME_LAYOUT = {"mmtx": dict(layout="interleaved", freq_shift=0.0),
                "diffusers": dict(layout="cos_sin", freq_shift=1.0)}


def check_labels(y, num_classes: int, batch: int) -> None:
    """y must be integer class ids (batch,) in [0, num_classes] (num_classes = null)."""
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or tuple(y.shape) != (batch,):
        got = f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y)
        raise ValueError(f"y must be integer class ids of shape ({batch},), got {got}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > num_classes):
        raise ValueError(f"y must lie in [0, {num_classes}] ({num_classes} = the null class), "
                         f"got values in [{int(y.min())}, {int(y.max())}]")


def check_drop_mask(mask, batch: int) -> torch.Tensor:
    """cond_drop_mask must be a bool (batch,) tensor (True = make the row unconditional)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool \
            or tuple(mask.shape) != (batch,):
        got = f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) \
            else type(mask).__name__
        raise ValueError(f"cond_drop_mask must be a bool tensor of shape ({batch},), got {got}")
    return mask


class CaptionConditioner(nn.Module):
    """Caption token ids -> the context that cross-attention reads and a pooled vector for c.

    ids (B, L) [+ mask (B, L), 1 on real tokens; default ids != pad_id] [+ drop (B,) bool, rows
    made null] -> context (B, 1 + L, text_dim), context_mask (B, 1, 1, 1 + L) bool, pooled
    (B, cond_dim). Position 0 of the context is a learned null token, visible only to null rows
    (no real token, or dropped); the others see only their real tokens. The pooled vector is the
    mean of the visible context, projected to cond_dim, so a null row pools to the null token.
    """

    def __init__(self, vocab_size: int, max_len: int, cond_dim: int, dim: int = 256,
                 depth: int = 2, num_heads: int = 4, pad_id: int = 0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0):
        super().__init__()
        self.max_len, self.pad_id = max_len, pad_id
        self.encoder = TextEncoder(vocab_size, max_len, dim, depth, num_heads, pool="mean",
                                   num_classes=0, mlm_head=False, pooler=False,
                                   drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.proj = nn.Linear(dim, cond_dim)
        self.init_weights()

    def init_weights(self):
        self.encoder.init_weights()  # BERT's N(0, 0.02)
        nn.init.normal_(self.null, std=0.02)  # as the null class row of LabelEmbedding
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
                drop: torch.Tensor | None = None):
        check_ids(ids, self.encoder.embed.vocab_size, "caption_ids")
        B, L = ids.shape
        if L > self.max_len:
            raise ValueError(f"caption_ids has {L} tokens, more than max_caption_len="
                             f"{self.max_len}")
        if mask is None:
            mask = ids != self.pad_id
        elif tuple(mask.shape) != (B, L):
            raise ValueError(f"caption_mask must have caption_ids' shape {(B, L)}, got "
                             f"{tuple(mask.shape)}")
        mask = mask.bool()
        null = ~mask.any(1, keepdim=True)  # (B, 1) rows with no real token
        if drop is not None:
            null = null | drop[:, None]
            # A dropped row is the empty caption: pad ids, no real token.
            ids = ids.masked_fill(drop[:, None], self.pad_id)  # (B, L)
        mask = mask & ~null
        tokens = self.encoder.forward_features(ids, attention_mask=mask)  # (B, L, dim)
        context = torch.cat([self.null.expand(B, 1, -1).to(tokens.dtype), tokens], 1)
        visible = torch.cat([null, mask], dim=1)  # (B, 1 + L), every row sees >= 1 token
        w = visible.to(context.dtype)[..., None]  # (B, 1 + L, 1)
        pooled = (context * w).sum(1) / w.sum(1)  # (B, dim)
        return context, visible[:, None, None, :], self.proj(pooled)


class Conditioner(nn.Module):
    """Timestep, class label and caption -> the conditioning vector c (B, dim) [+ the caption's
    context for cross-attention], shared by the DiT and the U-Net.

    forward(t, y=None, caption_ids=None, caption_mask=None, *, batch=B, drop=None) -> (c (B, dim),
    context (B, 1 + L, text_dim) or None, context_mask (B, 1, 1, 1 + L) or None). `drop`, a bool
    (B,) mask, makes those rows unconditional (null class and null caption together); without it
    each row is made unconditional with probability `cond_drop` in training mode (DiT's label
    dropout) and none is in eval mode. time_embed="diffusers" lays the timestep frequencies out
    as diffusers' DiT does (for converted weights).
    """

    def __init__(self, dim: int, num_classes: int = 0, vocab_size: int = 0, *,
                 cond_drop: float = 0.1, freq_dim: int = 256, time_embed: str = "mmtx",
                 max_caption_len: int = 32, text_dim: int = 256, text_depth: int = 2,
                 text_heads: int = 4, pad_id: int = 0, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0):
        super().__init__()
        if num_classes < 0 or vocab_size < 0:
            raise ValueError(f"num_classes and vocab_size must be >= 0 (0 = no such condition),"
                             f" got {num_classes}, {vocab_size}")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"cond_drop must be in [0, 1), got {cond_drop}")
        if time_embed not in TIME_EMBEDS:
            raise ValueError(f"time_embed must be one of {TIME_EMBEDS}, got {time_embed!r}")
        self.num_classes, self.cond_drop = num_classes, cond_drop
        self.t_embed = TimestepEmbedding(dim, freq_dim, **_TIME_LAYOUT[time_embed])
        self.y_embed = LabelEmbedding(num_classes, dim) if num_classes else None
        self.caption = CaptionConditioner(
            vocab_size, max_caption_len, dim, text_dim, text_depth, text_heads, pad_id,
            drop_rate, attn_drop_rate) if vocab_size else None

    def init_weights(self) -> None:
        self.t_embed.init_weights()  # N(0, 0.02), DiT's
        if self.y_embed is not None:
            nn.init.normal_(self.y_embed.table.weight, std=0.02)  # DiT's
        if self.caption is not None:
            self.caption.init_weights()

    def drop_mask(self, batch: int, device, drop=None) -> torch.Tensor | None:
        """The rows to make unconditional: `drop` checked, else drawn with probability
        `cond_drop` in training mode, else None (no row)."""
        if drop is not None:
            return check_drop_mask(drop, batch).to(device)
        if self.training and self.cond_drop > 0:
            return torch.rand(batch, device=device) < self.cond_drop  # (B,) rows made null
        return None

    def forward(self, t, y=None, caption_ids=None, caption_mask=None, *, batch: int,
                drop: torch.Tensor | None = None):
        device = self.t_embed.mlp[0].weight.device
        t = torch.as_tensor(t, device=device)
        t = t.expand(batch) if t.dim() == 0 else t  # (B,)
        if tuple(t.shape) != (batch,):
            raise ValueError(f"t must be a scalar or ({batch},), got shape {tuple(t.shape)}")
        drop = self.drop_mask(batch, device, drop)
        c = self.t_embed(t)  # (B, dim)
        if y is not None and self.y_embed is None:
            raise ValueError("y (class labels) given to a model built with num_classes=0")
        if self.y_embed is not None:
            if y is None:
                y = torch.full((batch,), self.num_classes, device=device)  # the null class
            check_labels(y, self.num_classes, batch)
            if drop is not None:
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)  # (B,)
            c = c + self.y_embed(y)
        if caption_ids is not None and self.caption is None:
            raise ValueError("caption_ids given to a model built with vocab_size=0")
        if self.caption is None:
            return c, None, None
        if caption_ids is None:  # the null caption: one pad token, no real token
            caption_ids = torch.full((batch, 1), self.caption.pad_id, device=device)
            caption_mask = torch.zeros(batch, 1, dtype=torch.bool, device=device)
        if caption_ids.dim() != 2 or caption_ids.shape[0] != batch:
            raise ValueError(f"caption_ids must be ({batch}, L), got shape "
                             f"{tuple(caption_ids.shape)}")
        context, context_mask, pooled = self.caption(caption_ids, caption_mask, drop)
        return c + pooled, context, context_mask
