"""Classifier-free guidance (Ho & Salimans 2022): push the prediction away from "no condition".

pred = uncond + s * (cond - uncond). s = 1 is the plain conditional model, s = 0 the
unconditional one, s > 1 trades diversity for agreement with the condition. Works for any
prediction that is linear in the model output: flow velocity or DDPM noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def check_cfg_scale(value, name: str = "cfg_scale") -> float:
    """The one check of a guidance scale: a finite number >= 0 (1 = no guidance, 0 = the
    unconditional model). `name` is what the user wrote it as (task.args.cfg_scale, --cfg):
    NaN or infinity would sample black images without a word."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0 (1 = no guidance), "
                         f"got {value!r}")
    return float(value)


def _null_like(cond, null_cond):
    """The null condition shaped like `cond`: a tensor, a tensor of cond[0]'s shape, a scalar
    (e.g. the null class index), or for a dict condition a dict of those."""
    if isinstance(cond, dict):
        if not isinstance(null_cond, dict) or set(null_cond) != set(cond):
            raise ValueError(f"null_cond must be a dict with the condition's keys {sorted(cond)},"
                             f" got {type(null_cond).__name__}")
        return {k: _null_like(cond[k], null_cond[k]) for k in cond}
    null = torch.as_tensor(null_cond, device=cond.device, dtype=cond.dtype)
    if null.shape in (cond.shape, cond.shape[1:]) or null.dim() == 0:
        return null.expand(cond.shape)
    raise ValueError(f"null_cond must be a scalar or of shape {tuple(cond.shape)} or "
                     f"{tuple(cond.shape[1:])} (the condition's), got {tuple(null.shape)}")


def _cat(a, b):
    if isinstance(a, dict):
        return {k: torch.cat([a[k], b[k]]) for k in a}
    return torch.cat([a, b])  # (2B, ...)


class ClassifierFreeGuidance:
    """Wraps model_fn(x, t, cond) into a guided model_fn with the same signature.

    For s not in (0, 1) the conditional and the unconditional predictions come from ONE forward
    over a doubled batch [cond; null] (one call, better device use than two half-size calls);
    s = 1 calls the model once on cond alone and returns its output unchanged, s = 0 once on the
    null condition. `null_cond` is what the model was trained with for "no condition": for a
    `LabelEmbedding`, its `null_index`; for a caption embedding, the null embedding.
    """

    def __init__(self, model_fn: Callable, null_cond, cfg_scale: float = 1.0):
        self.model_fn, self.null_cond = model_fn, null_cond
        self.cfg_scale = check_cfg_scale(cfg_scale)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond):
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition, got cond=None")
        if self.cfg_scale == 1.0:
            return self.model_fn(x, t, cond)
        null = _null_like(cond, self.null_cond)
        if self.cfg_scale == 0.0:
            return self.model_fn(x, t, null)
        out = self.model_fn(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, null))  # (2B, ...)
        pred_cond, pred_uncond = out.chunk(2)
        return pred_uncond + self.cfg_scale * (pred_cond - pred_uncond)
