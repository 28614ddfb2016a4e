"""Diffusion and flow matching: objectives, schedules, samplers, classifier-free guidance.

No model code: a model enters as model_fn(x, t, cond) -> prediction (B, ...), where t is a float
time in [0, 1] for flow matching and a long DDPM step for DDPM (`TimestepEmbedding` reads both).

    objective = create_objective("flow", timestep_sampling="logit_normal")
    loss, per_sample = objective.loss(model_fn, x0, cond)
    images = sample(model_fn, (16, 3, 32, 32), labels, objective=objective, sampler="heun",
                    steps=25, cfg_scale=3.0, null_cond=num_classes, seed=0)

Guided sampling (`sample`, `generate`, the registries) lives in mmtx.diffusion.sampling.
"""

from .ddpm import DDPM, cosine_alphabar, cosine_betas, linear_betas
from .flow import FlowMatching
from .guidance import ClassifierFreeGuidance, check_cfg_scale
from .samplers import DDIMSampler, DDPMSampler, EulerSampler, HeunSampler, Sampler
from .sampling import OBJECTIVES, SAMPLERS, create_objective, create_sampler, generate, sample

__all__ = [
    "DDPM", "FlowMatching", "ClassifierFreeGuidance", "Sampler", "EulerSampler", "HeunSampler",
    "DDPMSampler", "DDIMSampler", "linear_betas", "cosine_betas", "cosine_alphabar",
    "create_objective", "create_sampler", "sample", "generate", "check_cfg_scale", "OBJECTIVES",
    "SAMPLERS",
]
