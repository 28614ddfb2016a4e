"""Rectified flow / flow matching: a straight path from data to noise, learn its velocity.

x_t = (1 - t) x_0 + t * noise, so t = 0 is data and t = 1 is pure noise, and the velocity along
the path is d x_t / dt = noise - x_0, the regression target. Sampling integrates the learned
velocity from t = 1 back to t = 0 (see `samplers.EulerSampler`, `samplers.HeunSampler`).
The model is called as model_fn(x_t, t, cond) with t a float tensor (B,) in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, ...) x 2 -> (B,) mean squared error per sample, in float32."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def draw_t_noise(sample_t: Callable, x0: torch.Tensor, generator=None, t=None, noise=None):
    """The training times (B,) and noise (like x0) of a loss: drawn with `generator` unless
    given, and checked when given."""
    if t is None:
        t = sample_t(x0.shape[0], x0.device, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    if t.shape != (x0.shape[0],) or noise.shape != x0.shape:
        raise ValueError(f"t must be ({x0.shape[0]},) and noise {tuple(x0.shape)}, got "
                         f"t {tuple(t.shape)}, noise {tuple(noise.shape)}")
    return t, noise


def _bcast(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) to scale a (B, ...) tensor per sample."""
    return t.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class FlowMatching:
    """The flow-matching objective: timestep sampling, the path, the target and the loss.

    timestep_sampling "logit_normal" (SD3): t = sigmoid(N(loc, scale)), which puts more training
    on the middle of the path, where the velocity is hardest to predict; "uniform": t ~ U(0, 1).
    """

    def __init__(self, timestep_sampling: str = "logit_normal", loc: float = 0.0,
                 scale: float = 1.0):
        if timestep_sampling not in TIMESTEP_SAMPLING:
            raise ValueError(f"timestep_sampling must be one of {TIMESTEP_SAMPLING}, "
                             f"got {timestep_sampling!r}")
        for name, value in (("loc", loc), ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.timestep_sampling, self.loc, self.scale = timestep_sampling, loc, scale

    def __repr__(self):
        return (f"FlowMatching(timestep_sampling={self.timestep_sampling!r}, loc={self.loc}, "
                f"scale={self.scale})")

    def sample_t(self, n: int, device=None, generator: torch.Generator | None = None):
        """(n,) float32 training times in (0, 1)."""
        if self.timestep_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        z = torch.randn(n, generator=generator, device=device)
        return torch.sigmoid(self.loc + self.scale * z)

    def t_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Training times from uniforms in (0, 1), same distribution as `sample_t` (the inverse
        CDF; for per-item draws made elsewhere, mmtx.train.draws)."""
        if self.timestep_sampling == "uniform":
            return u
        z = math.sqrt(2) * torch.erfinv((2 * u - 1).clamp(-1 + 1e-7, 1 - 1e-7))  # N(0, 1)
        return torch.sigmoid(self.loc + self.scale * z)

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t noise; x0, noise (B, ...), t (B,)."""
        t = _bcast(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The velocity d x_t / dt = noise - x_0 (constant along each straight path)."""
        return noise - x0

    def loss(self, model_fn: Callable, x0: torch.Tensor, cond=None,
             generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None):
        """Returns (mean MSE, per-sample MSE (B,)) of the predicted velocity.

        t and noise are drawn (with `generator`) unless given; pass t to bin the per-sample
        loss by time.
        """
        t, noise = draw_t_noise(self.sample_t, x0, generator, t, noise)
        pred = model_fn(self.interpolate(x0, noise, t), t, cond)
        per_sample = per_sample_mse(pred, self.target(x0, noise))  # (B,)
        return per_sample.mean(), per_sample
