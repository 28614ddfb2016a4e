"""Guided sampling from a generator: what the generation task and `mmtx sample` call.

    objective = create_objective("flow", timestep_sampling="logit_normal")
    images = sample(model_fn, (16, 3, 32, 32), labels, objective=objective, sampler="heun",
                    steps=25, cfg_scale=3.0, null_cond=num_classes, seed=0)
    images = generate(model, {"y": y}, 1000, (3, 32, 32), objective=objective, cfg_scale=3.0,
                      null_cond={"y": num_classes}, batch_size=256, progress=True)

`sample` draws one batch; `generate` draws any number of images in chunks of `batch_size`,
the starting noise of each chunk drawn when the chunk starts (from one generator, so the same
seed gives the same images whatever the chunk size, for the deterministic samplers), after
checking that the result fits in memory. The guidance scale is `cfg_scale` everywhere, checked
by `check_cfg_scale` (mmtx.diffusion.guidance).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

import torch
import torch.nn as nn

from ..keys import check_keys
from .ddpm import DDPM
from .flow import FlowMatching
from .guidance import ClassifierFreeGuidance, check_cfg_scale
from .samplers import DDIMSampler, DDPMSampler, EulerSampler, HeunSampler, Sampler

OBJECTIVES = {"flow": FlowMatching, "ddpm": DDPM}
SAMPLERS = {"euler": EulerSampler, "heun": HeunSampler, "ddpm": DDPMSampler, "ddim": DDIMSampler}
_OBJECTIVE_OF = {"euler": FlowMatching, "heun": FlowMatching, "ddpm": DDPM, "ddim": DDPM}


def _choose(arg: str, name, options: dict):
    if name not in options:
        raise ValueError(f"{arg} must be one of {sorted(options)}, got {name!r}")
    return options[name]


def _check_kwargs(what: str, cls, kw: dict, skip=("self", "ddpm", "kw")):
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in skip]
    if issubclass(cls, Sampler):
        valid += ["progress", "autocast"]
    check_keys(kw, valid, "argument", of=what)


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
    cfg_scale = check_cfg_scale(cfg_scale)
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


def available_memory() -> int:
    """Bytes of memory this machine can still give (MemAvailable), or 0 when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(num: int, shape, what: str = "num", fraction: float = 0.5) -> None:
    """Refuse `num` float32 images of `shape` when they would take more than `fraction` of the
    memory still available: the samples are kept, so such a request could only end in swapping
    or the out-of-memory killer, hours later. The error names the limit."""
    per_image = 4 * int(torch.Size(shape).numel())
    need, free = num * per_image, available_memory()
    if free and need > fraction * free:
        most = int(fraction * free) // per_image
        raise ValueError(f"{what}: {num:,} images of shape {tuple(shape)} need "
                         f"{need / 2**30:,.1f} GiB as float32, more than {fraction:.0%} of the "
                         f"{free / 2**30:,.1f} GiB of memory available; at most {most:,} fit")


def _rows(cond, start: int, stop: int):
    if cond is None:
        return None
    return {k: v[start:stop] for k, v in cond.items()}


@torch.no_grad()
def generate(model: nn.Module, cond: dict | None, num: int, image_shape, *, objective,
             sampler: str = "euler", steps: int = 20, cfg_scale: float = 1.0, null_cond=None,
             seed: int = 0, batch_size: int = 256, progress: bool = False,
             autocast: bool = False, model_fn=None, sampler_args: dict | None = None,
             decode: Callable | None = None) -> torch.Tensor:
    """`num` samples (num, *image_shape) float32 from `model`, called as model(x, t, **cond)
    (or through `model_fn(x, t, cond)` when given, e.g. to turn an x0 prediction into a
    velocity).

    cond: None or a dict of (num, ...) tensors (y, or caption_ids and caption_mask). One
    generator seeded with `seed` draws each chunk's starting noise when the chunk starts (and
    the stochastic samplers' noise), so the same seed gives the same images. Chunks of
    `batch_size` are sampled in turn, with a progress bar over the images when there are
    several. cfg_scale != 1 needs null_cond (the model's "no condition", a dict like cond).
    sampler_args: the sampler's own options (e.g. {"shift": 3.0} for euler / heun).
    decode: applied to each chunk's samples (e.g. a latent autoencoder's decoder).
    The samples are returned on the CPU: chunk by chunk they leave the device, so the host
    memory `check_fits` measures is what bounds `num`, not the accelerator's.
    """
    cfg_scale = check_cfg_scale(cfg_scale)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num: expected an int >= 1, got {num!r}")
    check_fits(num, image_shape, "num")
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)

    if model_fn is None:
        def model_fn(x, t, c):
            return model(x, t, **(c or {}))

    if cond is not None:
        cond = {k: v.to(device) for k, v in cond.items()}
    out = []
    bar = None
    if progress and num > batch_size:
        from tqdm.auto import tqdm
        bar = tqdm(total=num, desc="images", unit="img")
    for start in range(0, num, batch_size):
        stop = min(start + batch_size, num)
        noise = torch.randn((stop - start, *image_shape), generator=gen, device=device)
        x = sample(model_fn, noise.shape, _rows(cond, start, stop), objective=objective,
                   sampler=sampler, cfg_scale=cfg_scale, null_cond=null_cond, generator=gen,
                   noise=noise, steps=steps, progress=progress and bar is None,
                   autocast=autocast, **(sampler_args or {}))
        out.append((x if decode is None else decode(x)).cpu())  # kept in host memory
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return torch.cat(out)
