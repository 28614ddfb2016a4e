"""Images from a trained generation run: `mmtx sample`.

    mmtx sample runs/gen_class --class "red circle" --class "blue star" --n 16 --out grid.png
    mmtx sample runs/gen_text --prompt "a large green triangle" --out-dir samples/

A run directory is what `mmtx train` wrote for the `generation` task: config.yaml, model.json,
model.safetensors (the EMA weights when the run kept an EMA), generation.json (class names,
image shape, the scenes' options) and, for captions, tokenizer.json.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .train.run import load_generator
from .train.tasks.generation import save_grid


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def sample_command(run_dir, classes=None, prompts=None, n: int = 16, steps: int = 50,
                   cfg_scale: float = 3.0, sampler: str | None = None, seed: int = 0,
                   out="grid.png", out_dir=None, cols: int | None = None,
                   progress: bool = True, vae=None) -> torch.Tensor:
    """Sample `n` images (classes / prompts cycled over them), write a grid PNG to `out` and,
    with `out_dir`, one PNG per image; returns the images (n, C, H, W) in [-1, 1].

    Defaults: every class in turn (class runs), the first shapes test captions (caption runs);
    the run's sampler. A latent run decodes with its autoencoder (`vae` overrides the folder
    it trained with). An unknown class name or a word outside the vocabulary is a ValueError
    naming it and listing the valid ones.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"--n: expected an int >= 1, got {n!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps: expected an int >= 1, got {steps!r}")
    if cfg_scale < 0:
        raise ValueError(f"--cfg: expected >= 0 (1 = no guidance), got {cfg_scale}")
    model, task, cfg = load_generator(run_dir, vae=vae)
    cond, labels = task.conditions(n, classes=classes, prompts=prompts)  # checks names, words
    device = torch.device("cuda" if torch.cuda.is_available() and not cfg.train.cpu else "cpu")
    if cfg.train.threads:  # as the run trained: tiny models run faster on one thread
        torch.set_num_threads(cfg.train.threads)
    model.to(device)
    images = task.sample_images(model, cond, n, seed, progress=progress,
                                autocast=cfg.train.precision != "fp32", cfg_scale=cfg_scale,
                                steps=steps, sampler=sampler).cpu()
    if out:
        path = save_grid(images, out, cols=cols)
        print(f"grid of {n} images: {path}")
    if out_dir:
        out_dir = Path(out_dir)
        for i, (img, label) in enumerate(zip(images, labels)):
            name = f"{i:03d}" + (f"_{_slug(label)}" if label else "") + ".png"
            save_grid(img[None], out_dir / name, pad=0, scale=1)
        print(f"{n} images: {out_dir}/")
    return images
