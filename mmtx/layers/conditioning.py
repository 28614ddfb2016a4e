"""Conditioning for generators: timestep embedding, label embedding with a null class, modulate.

These are the three pieces DiT's adaLN-Zero needs from outside the block: a vector for the noise
level, a vector for the class (or "no class", for classifier-free guidance), and the shift/scale
that the block applies after its norm.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

LAYOUTS = ("interleaved", "sin_cos", "cos_sin")


def timestep_frequencies(t: torch.Tensor, dim: int, base: float = 10000.0,
                         layout: str = "interleaved", freq_shift: float = 0.0) -> torch.Tensor:
    """(B,) real-valued times -> (B, dim) sin/cos features, the form of `sinusoidal_encoding`.

    Default: the frequencies base^(-2i/dim) and layout (sin on even channels, cos on odd) of
    `mmtx.layers.sinusoidal_encoding`, so for integer t the rows equal that table's rows. That
    function tabulates the integer positions 0..L-1; a flow-matching time is a real number, so
    the formula is evaluated here at arbitrary t instead of looked up.

    diffusers' `get_timestep_embedding` layout, for converted weights: layout "sin_cos" (all
    sines, then all cosines) or "cos_sin" (its flip_sin_to_cos=True), and freq_shift = its
    downscale_freq_shift: frequencies base^(-i / (dim/2 - freq_shift)), i < dim/2.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be even and > 0, got {dim}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    half = dim // 2
    if freq_shift == 0.0:
        freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=t.device) / dim)
    else:  # diffusers' formula, evaluated as it does
        exponent = -math.log(base) * torch.arange(half, dtype=torch.float32, device=t.device)
        freq = torch.exp(exponent / (half - freq_shift))
    angle = t.float()[:, None] * freq  # (B, dim/2)
    if layout == "interleaved":
        # (B, dim/2, 2) -> (B, dim): channel 2i is sin, 2i+1 is cos.
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)
    parts = [angle.sin(), angle.cos()]
    return torch.cat(parts[::-1] if layout == "cos_sin" else parts, dim=-1)  # (B, dim)


class TimestepEmbedding(nn.Module):
    """A noise level t -> (B, dim): sinusoidal frequencies, then Linear-SiLU-Linear (DiT).

    How t is read: a floating-point t is a time in [0, 1] (flow matching: 0 = data, 1 = noise)
    and is multiplied by `t_scale` (1000) before the frequencies, so it spans the same range of
    phases as DDPM's integer steps 0..999; an integer tensor is a DDPM step and is used as is.
    Without the scaling, t in [0, 1] would move only the lowest frequencies and the embedding of
    t = 0.1 and t = 0.2 would barely differ.

    layout and freq_shift choose the frequency layout (`timestep_frequencies`): the default is
    mmtx's; layout="cos_sin", freq_shift=1 is diffusers' DiT (`Timesteps(256,
    flip_sin_to_cos=True, downscale_freq_shift=1)`), for its converted weights.
    """

    def __init__(self, dim: int, freq_dim: int = 256, t_scale: float = 1000.0, *,
                 layout: str = "interleaved", freq_shift: float = 0.0):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if not 0.0 <= freq_shift < freq_dim // 2:
            raise ValueError(f"freq_shift must be in [0, freq_dim / 2), got {freq_shift}")
        self.freq_dim, self.t_scale = freq_dim, t_scale
        self.layout, self.freq_shift = layout, float(freq_shift)
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
        freqs = timestep_frequencies(t, self.freq_dim, layout=self.layout,
                                     freq_shift=self.freq_shift)  # (B, freq_dim), float32
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))  # (B, dim)


class LabelEmbedding(nn.Module):
    """Class ids -> (B, dim), with one extra "null" row at index `num_classes`.

    The null row is what classifier-free guidance needs: trained on labels replaced by null for
    some rows, the same network also predicts unconditionally, and the sampler mixes the two.
    The row always exists so a model can be sampled with guidance after fine-tuning with drops,
    and checkpoints keep one shape. Which rows are dropped is the model's conditioner's
    decision (`mmtx.models.conditioning.Conditioner`), not this table's.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)
        nn.init.normal_(self.table.weight, std=0.02)  # DiT's init

    @property
    def null_index(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B,) in [0, num_classes] (num_classes = null) -> (B, dim)."""
        if labels.dim() != 1 or labels.is_floating_point():
            raise ValueError(f"labels must be integer ids of shape (B,), got {labels.dtype} "
                             f"of shape {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}] ({self.num_classes} = "
                             f"null), got min {labels.min().item()}, max {labels.max().item()}")
        return self.table(labels)  # (B, dim)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
             channel_dim: int = -1) -> torch.Tensor:
    """x * (1 + scale) + shift, per sample and channel (adaLN, FiLM).

    x (B, L, D) with shift and scale (B, D) (a block's adaLN), or any x whose channels sit at
    `channel_dim`, e.g. a feature map (B, C, H, W) with channel_dim=1 (the U-Net's FiLM).
    `1 + scale` rather than `scale`: with adaLN-Zero the projection producing scale starts at
    zero, so the block starts as the plain (unmodulated) normalised block.
    """
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[channel_dim] = x.shape[channel_dim]  # e.g. (B, 1, D) broadcasts over L
    return x * (1 + scale.reshape(shape)) + shift.reshape(shape)
