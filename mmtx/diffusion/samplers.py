"""Samplers: Euler and Heun for flow matching, ancestral DDPM and DDIM for DDPM.

Every sampler is called as `sampler(model_fn, noise, cond=None, generator=None)` with the
starting noise (B, ...) and returns the sample x_0 (B, ...) in float32. model_fn(x, t, cond) is
a flow model (float t in [0, 1]) or a noise predictor (long t, DDPM steps). The state is kept in
float32 whatever the model computes in: with `autocast=True` only the model call runs under bf16
autocast, so rounding does not accumulate over the steps. Stochastic samplers (DDPM, DDIM with
eta > 0) draw their noise from `generator`, so a seed fixes the sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .ddpm import DDPM


class Sampler:
    name = ""

    def __init__(self, steps: int, progress: bool = False, autocast: bool = False):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        self.steps, self.progress, self.autocast = steps, progress, autocast

    def __repr__(self):
        return f"{type(self).__name__}(steps={self.steps})"

    def _model(self, model_fn: Callable, x: torch.Tensor, t: torch.Tensor, cond):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return model_fn(x, t, cond).float()

    def _bar(self, n: int):
        return tqdm(range(n), desc=f"sampling ({self.name})", disable=not self.progress,
                    leave=False)


def flow_times(steps: int, shift: float = 1.0, device=None) -> torch.Tensor:
    """(steps + 1,) times from 1 (noise) to 0 (data): evenly spaced, then shifted towards the
    noise end by t -> shift t / (1 + (shift - 1) t) (SD3's shift; 1 = even). The first steps
    are where a sample settles its layout, so shift > 1 spends more of them there."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    u = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * u / (1 + (shift - 1) * u)


class FlowSampler(Sampler):
    """An ODE sampler for flow matching over `flow_times(steps, shift)`."""

    def __init__(self, steps: int, shift: float = 1.0, **kw):
        super().__init__(steps, **kw)
        flow_times(1, shift)  # checks shift
        self.shift = float(shift)

    def __repr__(self):
        return f"{type(self).__name__}(steps={self.steps}, shift={self.shift})"


class EulerSampler(FlowSampler):
    """First-order ODE steps from t = 1 (noise) to t = 0 (data): x += (t_next - t) v(x, t)."""

    name = "euler"

    def __init__(self, steps: int = 50, shift: float = 1.0, **kw):
        super().__init__(steps, shift, **kw)

    @torch.no_grad()
    def __call__(self, model_fn, noise, cond=None, generator=None):
        x = noise.float()
        ts = flow_times(self.steps, self.shift, x.device)  # (steps+1,)
        for i in self._bar(self.steps):
            t = ts[i].expand(x.shape[0])  # (B,)
            x = x + (ts[i + 1] - ts[i]) * self._model(model_fn, x, t, cond)
        return x


class HeunSampler(FlowSampler):
    """Second-order (trapezoidal) ODE steps: an Euler guess, then the mean of both slopes.

    Two model calls per step, so 25 Heun steps cost what 50 Euler steps cost; the velocity is
    defined at t = 0, so the last step is corrected too (EDM skips it because its sigma = 0 is
    singular for a denoiser, which a flow model is not).
    """

    name = "heun"

    def __init__(self, steps: int = 25, shift: float = 1.0, **kw):
        super().__init__(steps, shift, **kw)

    @torch.no_grad()
    def __call__(self, model_fn, noise, cond=None, generator=None):
        x = noise.float()
        ts = flow_times(self.steps, self.shift, x.device)  # (steps+1,)
        for i in self._bar(self.steps):
            t, t_next = ts[i].expand(x.shape[0]), ts[i + 1].expand(x.shape[0])  # (B,)
            dt = ts[i + 1] - ts[i]
            v = self._model(model_fn, x, t, cond)
            v_next = self._model(model_fn, x + dt * v, t_next, cond)
            x = x + dt * 0.5 * (v + v_next)
        return x


def _timesteps(num_steps: int, steps: int) -> list[int]:
    """`steps` DDPM steps evenly spread over 0 .. num_steps-1, descending (noise first)."""
    if steps > num_steps:
        raise ValueError(f"steps must be <= the objective's num_steps ({num_steps}), got {steps}")
    # Descending from the last step, so even steps=1 starts from (nearly) pure noise.
    return torch.linspace(num_steps - 1, 0, steps).round().long().tolist()


class _DDPMFamily(Sampler):
    def __init__(self, ddpm: DDPM, steps: int | None, clip_x0: float | None, **kw):
        if not isinstance(ddpm, DDPM):
            raise ValueError(f"the {self.name} sampler needs a DDPM objective, "
                             f"got {type(ddpm).__name__}")
        super().__init__(ddpm.num_steps if steps is None else steps, **kw)
        self.ddpm, self.clip_x0 = ddpm, clip_x0
        self.timesteps = _timesteps(ddpm.num_steps, self.steps)

    def _ab(self, step: int) -> float:
        """alphabar at a step; step -1 (before the first) is clean data, alphabar = 1."""
        return 1.0 if step < 0 else float(self.ddpm.alphas_cumprod[step])

    def _eps_x0(self, model_fn, x, step, cond):
        """The noise estimate and the x_0 it implies (clamped to +-clip_x0 if set)."""
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)  # (B,)
        eps = self._model(model_fn, x, t, cond)
        ab = self._ab(step)
        x0 = (x - (1 - ab) ** 0.5 * eps) / ab ** 0.5
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (x - ab ** 0.5 * x0) / (1 - ab) ** 0.5  # keep eps consistent with x0
        return eps, x0


class DDPMSampler(_DDPMFamily):
    """Ancestral sampling (Ho et al.): x_{t-1} ~ q(x_{t-1} | x_t, x_0 = predicted x_0).

    Uses the posterior variance beta~_t = (1 - ab_{t-1}) / (1 - ab_t) beta_t. With `steps`
    fewer than the objective's, the chain is respaced (Nichol & Dhariwal): betas are recomputed
    between the kept steps from alphabar, so the marginals stay those of the training chain.
    `clip_x0` clamps the predicted x_0 (1.0 for images in [-1, 1]).
    """

    name = "ddpm"

    def __init__(self, ddpm: DDPM, steps: int | None = None, clip_x0: float | None = None,
                 **kw):
        super().__init__(ddpm, steps, clip_x0, **kw)

    @torch.no_grad()
    def __call__(self, model_fn, noise, cond=None, generator=None):
        x = noise.float()
        prev = self.timesteps[1:] + [-1]
        for i in self._bar(len(self.timesteps)):
            step, step_prev = self.timesteps[i], prev[i]
            _, x0 = self._eps_x0(model_fn, x, step, cond)
            ab, ab_prev = self._ab(step), self._ab(step_prev)
            beta = 1 - ab / ab_prev  # of the (respaced) step
            # Posterior mean of q(x_{t-1} | x_t, x_0): a mix of the x_0 guess and x_t.
            mean = (ab_prev ** 0.5 * beta / (1 - ab)) * x0 \
                + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab)) * x
            var = beta * (1 - ab_prev) / (1 - ab)
            x = mean
            if step_prev >= 0:
                z = torch.randn(x.shape, generator=generator, device=x.device)
                x = x + var ** 0.5 * z
        return x


class DDIMSampler(_DDPMFamily):
    """DDIM (Song et al. 2021): x_{t'} = sqrt(ab') x_0 + sqrt(1 - ab' - sigma^2) eps + sigma z.

    sigma = eta * sqrt((1 - ab') / (1 - ab) * (1 - ab / ab')): eta = 0 is deterministic (an ODE,
    the same noise gives the same sample), eta = 1 has the ancestral sampler's variance.
    """

    name = "ddim"

    def __init__(self, ddpm: DDPM, steps: int | None = 50, eta: float = 0.0,
                 clip_x0: float | None = None, **kw):
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0 = deterministic), got {eta}")
        super().__init__(ddpm, steps, clip_x0, **kw)
        self.eta = eta

    def __repr__(self):
        return f"DDIMSampler(steps={self.steps}, eta={self.eta})"

    @torch.no_grad()
    def __call__(self, model_fn, noise, cond=None, generator=None):
        x = noise.float()
        prev = self.timesteps[1:] + [-1]
        for i in self._bar(len(self.timesteps)):
            step, step_prev = self.timesteps[i], prev[i]
            eps, x0 = self._eps_x0(model_fn, x, step, cond)
            ab, ab_prev = self._ab(step), self._ab(step_prev)
            sigma = self.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5
            x = ab_prev ** 0.5 * x0 + max(1 - ab_prev - sigma ** 2, 0.0) ** 0.5 * eps
            if sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device)
        return x
