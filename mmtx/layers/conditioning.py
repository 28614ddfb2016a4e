"""Conditioning for generators: timestep embedding, label embedding with a null class, modulate.

These are the three pieces DiT's adaLN-Zero needs from outside the block: a vector for the noise
level, a vector for the class (or "no class", for classifier-free guidance), and the shift/scale
that the block applies after its norm.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def timestep_frequencies(t: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(B,) real-valued times -> (B, dim) sin/cos features, the form of `sinusoidal_encoding`.

    Same frequencies base^(-2i/dim) and layout (sin on even channels, cos on odd) as
    `mmtx.layers.sinusoidal_encoding`, so for integer t the rows equal that table's rows.
    That function tabulates the integer positions 0..L-1; a flow-matching time is a real
    number, so the formula is evaluated here at arbitrary t instead of looked up.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be even and > 0, got {dim}")
    freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=t.device) / dim)
    angle = t.float()[:, None] * freq  # (B, dim/2)
    # (B, dim/2, 2) -> (B, dim): channel 2i is sin, 2i+1 is cos.
    return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)


class TimestepEmbedding(nn.Module):
    """A noise level t -> (B, dim): sinusoidal frequencies, then Linear-SiLU-Linear (DiT).

    How t is read: a floating-point t is a time in [0, 1] (flow matching: 0 = data, 1 = noise)
    and is multiplied by `t_scale` (1000) before the frequencies, so it spans the same range of
    phases as DDPM's integer steps 0..999; an integer tensor is a DDPM step and is used as is.
    Without the scaling, t in [0, 1] would move only the lowest frequencies and the embedding of
    t = 0.1 and t = 0.2 would barely differ.
    """

    def __init__(self, dim: int, freq_dim: int = 256, t_scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.t_scale = freq_dim, t_scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.init_weights()

    def init_weights(self):
        # DiT's init: small normal weights so the t-vector starts near the bias, not saturated.
        for layer in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        if t.dim() > 1:
            raise ValueError(f"t must be a scalar or (B,), got shape {tuple(t.shape)}")
        t = t.reshape(-1)  # (B,)
        if t.is_floating_point():
            t = t * self.t_scale
        freqs = timestep_frequencies(t, self.freq_dim)  # (B, freq_dim), float32
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, dim)


class LabelEmbedding(nn.Module):
    """Class ids -> (B, dim), with one extra "null" row at index `num_classes`.

    The null row is what classifier-free guidance needs: trained on labels replaced by null with
    probability `drop_prob`, the same network also predicts unconditionally, and the sampler mixes
    the two. The row always exists (also with drop_prob 0) so a model can be sampled with
    guidance after fine-tuning with drops, and checkpoints keep one shape.
    """

    def __init__(self, num_classes: int, dim: int, drop_prob: float = 0.0):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.num_classes, self.drop_prob = num_classes, drop_prob
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)  # DiT's init

    @property
    def null_index(self) -> int:
        return self.num_classes

    def drop(self, labels: torch.Tensor, p: float | None = None,
             generator: torch.Generator | None = None,
             force_drop: torch.Tensor | None = None) -> torch.Tensor:
        """labels (B,) -> labels with some replaced by the null index.

        Each label is dropped with probability `p` (default `drop_prob`); where the bool mask
        `force_drop` (B,) is True it is dropped regardless (to build the unconditional half of
        a guidance batch, or to test).
        """
        p = self.drop_prob if p is None else p
        drop = torch.zeros_like(labels, dtype=torch.bool)
        if p > 0:
            drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p
        if force_drop is not None:
            if force_drop.shape != labels.shape:
                raise ValueError(f"force_drop must have the labels' shape {tuple(labels.shape)}, "
                                 f"got {tuple(force_drop.shape)}")
            drop = drop | force_drop.bool()
        return torch.where(drop, torch.full_like(labels, self.null_index), labels)

    def forward(self, labels: torch.Tensor, force_drop: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """labels (B,) in [0, num_classes] (num_classes = null) -> (B, dim).

        In training mode labels are dropped with `drop_prob`; in eval mode only `force_drop`
        drops.
        """
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"labels must be integer ids of shape (B,), got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = "
                             f"null), got min {labels.min().item()}, max {labels.max().item()}")
        p = self.drop_prob if self.training else 0.0
        if p > 0 or force_drop is not None:
            labels = self.drop(labels, p, generator, force_drop)
        return self.table(labels)  # (B, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), shift and scale (B, D) -> x * (1 + scale) + shift, per sample (adaLN).

    `1 + scale` rather than `scale`: with adaLN-Zero the projection producing scale starts at
    zero, so the block starts as the plain (unmodulated) normalised block.
    """
    return x * (1 + scale[:, None]) + shift[:, None]  # (B, 1, D) broadcasts over L
