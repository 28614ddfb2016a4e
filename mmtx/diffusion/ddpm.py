"""DDPM (Ho et al. 2020): a discrete noising chain, the network predicts the added noise.

q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I) for steps t = 0 .. T-1, with
alphabar_t = prod_{s<=t} (1 - beta_s). The model is called as model_fn(x_t, t, cond) with t an
integer (long) tensor (B,) of steps, and returns the noise estimate eps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .flow import _bcast, draw_t_noise, per_sample_mse

SCHEDULES = ("linear", "cosine")


def linear_betas(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02,
                 max_beta: float = 0.999):
    """(T,) float64 betas rising linearly from beta_start to beta_end (Ho et al.).

    The endpoints are Ho's for T = 1000; for another T they are scaled by 1000 / T (Nichol &
    Dhariwal), so the chain still ends near pure noise (alphabar_T ~ 4e-5) with fewer steps.
    Below T = 50 the scaled betas would pass 1, so they are clipped at max_beta.
    """
    scale = 1000 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)
    return betas.clamp(max=max_beta)


def cosine_alphabar(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """alphabar(t) = f(t) / f(0), f(t) = cos((t + s) / (1 + s) * pi / 2)^2, t in [0, 1]."""
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return f / math.cos(s / (1 + s) * math.pi / 2) ** 2


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999):
    """(T,) float64 betas of the cosine schedule (Nichol & Dhariwal 2021).

    beta_t = 1 - alphabar((t+1)/T) / alphabar(t/T), clipped at max_beta: the last steps would
    otherwise have beta = 1 (alphabar(1) = 0) and a singular reverse step. The offset s keeps
    beta_0 from being tiny, where predicting eps would be too easy to be useful.
    """
    grid = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps  # (T+1,)
    ab = cosine_alphabar(grid, s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


class DDPM:
    """The DDPM objective and its schedule tables (float64, cast where used)."""

    def __init__(self, num_steps: int = 1000, schedule: str = "linear"):
        if not isinstance(num_steps, int) or num_steps < 2:
            raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.num_steps, self.schedule = num_steps, schedule
        self.betas = linear_betas(num_steps) if schedule == "linear" else cosine_betas(num_steps)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, dim=0)  # (T,) alphabar_t

    def __repr__(self):
        return f"DDPM(num_steps={self.num_steps}, schedule={self.schedule!r})"

    def alphabar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """alphabar at steps t (B,), shaped (B, 1, ..., 1) in like's dtype and device."""
        ab = self.alphas_cumprod.to(t.device)[t]
        return _bcast(ab, like).to(like.device)

    def sample_t(self, n: int, device=None, generator: torch.Generator | None = None):
        """(n,) long training steps, uniform over 0 .. T-1."""
        return torch.randint(0, self.num_steps, (n,), generator=generator, device=device)

    def t_from_uniform(self, u: torch.Tensor) -> torch.Tensor:
        """Training steps from uniforms in [0, 1), uniform over 0 .. T-1 as `sample_t`."""
        return (u * self.num_steps).long().clamp(0, self.num_steps - 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) noise."""
        if t.is_floating_point() or t.min() < 0 or t.max() >= self.num_steps:
            raise ValueError(f"t must be integer steps in [0, {self.num_steps - 1}], got "
                             f"{t.dtype} in [{t.min().item()}, {t.max().item()}]")
        ab = self.alphabar(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample given a noise estimate: x_0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab)."""
        ab = self.alphabar(t, x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def loss(self, model_fn: Callable, x0: torch.Tensor, cond=None,
             generator: torch.Generator | None = None, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None):
        """Returns (mean MSE, per-sample MSE (B,)) of the predicted noise (Ho's L_simple)."""
        t, noise = draw_t_noise(self.sample_t, x0, generator, t, noise)
        pred = model_fn(self.q_sample(x0, t, noise), t, cond)
        per_sample = per_sample_mse(pred, noise)  # (B,)
        return per_sample.mean(), per_sample
