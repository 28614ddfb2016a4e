"""Diffusion and flow matching: objectives, schedules, samplers, classifier-free guidance.

No model code: a model enters as model_fn(x, t, cond) -> prediction (B, ...), where t is a float
time in [0, 1] for flow matching and a long DDPM step for DDPM (`TimestepEmbedding` reads both).

    objective = create_objective("flow", timestep_sampling="logit_normal")
    loss, per_sample = objective.loss(model_fn, x0, cond)
    images = sample(model_fn, (16, 3, 32, 32), labels, objective=objective, sampler="heun",
                    steps=25, cfg_scale=3.0, null_cond=num_classes, seed=0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn as nn

from .ddpm import DDPM, cosine_alphabar, cosine_betas, linear_betas
from .flow import FlowMatching
from .guidance import ClassifierFreeGuidance
from .samplers import DDIMSampler, DDPMSampler, EulerSampler, HeunSampler, Sampler

OBJECTIVES = {"flow": FlowMatching, "ddpm": DDPM}
SAMPLERS = {"euler": EulerSampler, "heun": HeunSampler, "ddpm": DDPMSampler, "ddim": DDIMSampler}
_OBJECTIVE_OF = {"euler": FlowMatching, "heun": FlowMatching, "ddpm": DDPM, "ddim": DDPM}

__all__ = [
    "DDPM", "FlowMatching", "ClassifierFreeGuidance", "Sampler", "EulerSampler", "HeunSampler",
    "DDPMSampler", "DDIMSampler", "linear_betas", "cosine_betas", "cosine_alphabar",
    "create_objective", "create_sampler", "sample", "OBJECTIVES", "SAMPLERS",
]


def _choose(arg: str, name, options: dict):
    if name not in options:
        raise ValueError(f"{arg} must be one of {sorted(options)}, got {name!r}")
    return options[name]


def _check_kwargs(what: str, cls, kw: dict, skip=("self", "ddpm", "kw")):
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in skip]
    if issubclass(cls, Sampler):
        valid += ["progress", "autocast"]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown} for {what}; expected some of {valid}")


def create_objective(name: str = "flow", **kw):
    """"flow" -> FlowMatching(timestep_sampling, loc, scale); "ddpm" -> DDPM(num_steps,
    schedule)."""
    cls = _choose("objective", name, OBJECTIVES)
    _check_kwargs(f"objective {name!r}", cls, kw)
    return cls(**kw)


def create_sampler(name: str, objective=None, **kw) -> Sampler:
    """euler | heun (flow matching; objective optional) or ddpm | ddim (need the DDPM
    objective, whose schedule they walk back). kw: steps, progress, autocast; ddpm/ddim also
    clip_x0; ddim also eta."""
    cls = _choose("sampler", name, SAMPLERS)
    _check_kwargs(f"sampler {name!r}", cls, kw)
    need = _OBJECTIVE_OF[name]
    if objective is not None and not isinstance(objective, need):
        raise ValueError(f"sampler {name!r} needs a {need.__name__} objective, "
                         f"got {type(objective).__name__}")
    if need is DDPM:
        if objective is None:
            raise ValueError(f"sampler {name!r} needs objective=DDPM(...) (its noise schedule), "
                             f"got None")
        return cls(objective, **kw)
    return cls(**kw)


def sample(model_fn: Callable, shape, cond=None, *, objective=None, sampler: str = "euler",
           cfg_scale: float = 1.0, null_cond=None, seed: int | None = 0,
           generator: torch.Generator | None = None, device=None, noise=None,
           **sampler_kw) -> torch.Tensor:
    """Draw samples (shape, float32) from noise with the named sampler.

    objective: a FlowMatching / DDPM (or "flow" / "ddpm"); defaults to the sampler's kind with
    default settings. cfg_scale != 1 wraps model_fn in `ClassifierFreeGuidance(model_fn,
    null_cond, cfg_scale)`. Randomness comes from `generator` if given, else from a fresh
    generator seeded with `seed` on `device` (None: a seed drawn from torch's global RNG), so
    the same seed gives the same samples. device defaults to model_fn's (if a module), else CPU.
    sampler_kw: steps, eta, clip_x0, progress, autocast (see `create_sampler`).
    """
    if isinstance(objective, str):
        objective = create_objective(objective)
    if objective is None and _OBJECTIVE_OF.get(sampler) is DDPM:
        objective = DDPM()
    run = create_sampler(sampler, objective, **sampler_kw)
    if cfg_scale != 1.0:
        if null_cond is None:
            raise ValueError(f"cfg_scale={cfg_scale} needs null_cond (the model's 'no "
                             f"condition'), got None")
        model_fn = ClassifierFreeGuidance(model_fn, null_cond, cfg_scale)
    if generator is None:
        if device is None:  # where the model is, if it is a module with parameters
            param = next(model_fn.parameters(), None) if isinstance(model_fn, nn.Module) \
                else None
            device = "cpu" if param is None else param.device
        device = torch.device(device)
        if seed is None:  # follow torch's global RNG, so torch.manual_seed still fixes it
            seed = int(torch.randint(2**62, ()))
        generator = torch.Generator(device).manual_seed(seed)
    else:
        device = generator.device
    if noise is None:
        noise = torch.randn(tuple(shape), generator=generator, device=device)
    elif tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
    return run(model_fn, noise, cond, generator)
