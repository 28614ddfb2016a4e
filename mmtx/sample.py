"""Images from a trained generation run: `mmtx sample`, and the reading of what a person asks
for (class names, prompts) into the model's condition.

    mmtx sample runs/gen_class --class "red circle" --class "blue star" --n 16 --out grid.png
    mmtx sample runs/gen_text --prompt "a large green triangle" --out-dir samples/

A run directory is what `mmtx train` wrote for the `generation` task: config.yaml, model.json,
model.safetensors (the EMA weights when the run kept an EMA), generation.json (class names,
image shape, the scenes' options) and, for captions, tokenizer.json.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import torch

from .data import WordTokenizer
from .diffusion.sampling import check_cfg_scale, check_fits, create_sampler
from .train.engine import torch_threads
from .train.run import load_generator
from .viz.grids import check_grid, image_format, save_grid

__all__ = ["sample_command", "load_generator", "class_ids", "encode_prompts", "conditions"]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:60]


def _check_writable(folder: Path, what: str, given) -> None:
    """Refuse, before sampling, a folder the images cannot be written to (read-only, no
    permission, a file in the way), naming the option and the folder."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {str(given)!r}: {str(folder)!r} is a file; expected a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{what} {str(given)!r}: cannot write in {str(folder)!r} "
                         f"({e.strerror or e})") from None


def class_ids(task, names: list[str]) -> list[int]:
    """Class names -> ids of a class-conditioned run's `task`; an unknown name is a ValueError
    listing the valid ones."""
    if task.cond != "class":
        raise ValueError(f"--class: this model is conditioned on {task.cond!r}, not on a "
                         f"class" + ("; use --prompt" if task.cond == "caption" else ""))
    ids = []
    for name in names:
        key = str(name).strip()
        if key not in task.class_names:
            raise ValueError(f"--class: unknown class {name!r}; valid classes: "
                             f"{', '.join(task.class_names)}")
        ids.append(task.class_names.index(key))
    return ids


def encode_prompts(task, prompts: list[str]) -> dict:
    """Captions -> {"caption_ids", "caption_mask"} (N, max_caption_len) for a caption run's
    `task`; a word outside the vocabulary or a caption too long is a ValueError naming it."""
    if task.cond != "caption":
        raise ValueError(f"--prompt: this model is conditioned on {task.cond!r}, not on a "
                         f"caption" + ("; use --class" if task.cond == "class" else ""))
    tok = task.tokenizer
    for text in prompts:
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"prompt: expected a non-empty caption, got {text!r}")
        # A word-level vocabulary cannot spell an unknown word (byte/BPE tokenizers can).
        unknown = ([w for w in tok.tokenize(text) if w not in tok.stoi]
                   if isinstance(tok, WordTokenizer) else [])
        if unknown:
            vocab = [w for w in tok.itos if not w.startswith("<")]
            raise ValueError(f"prompt {text!r}: word(s) {unknown} not in the vocabulary; "
                             f"valid words: {', '.join(vocab)}")
        n = len(tok.encode(text))
        if n > task.max_caption_len:
            raise ValueError(f"prompt {text!r} is {n} tokens with bos/eos, more than "
                             f"max_caption_len {task.max_caption_len}")
    return task.encode_captions(prompts)


def conditions(task, num: int, classes=None, prompts=None) -> tuple[dict | None, list[str]]:
    """(model condition for `num` images, a label per image). Given classes / prompts are
    cycled over the images; without them, the task's defaults (every class in turn, or the
    captions of the first shapes test scenes)."""
    if task.cond == "none":
        if classes or prompts:
            raise ValueError("this model is unconditional: it takes no --class or --prompt")
    elif task.cond == "class":
        if prompts:
            encode_prompts(task, prompts)  # raises: not a caption model
        if classes:
            ids = class_ids(task, classes)
            y = torch.tensor([ids[i % len(ids)] for i in range(num)])
            return {"y": y}, [task.class_names[int(i)] for i in y]
    else:
        if classes:
            class_ids(task, classes)  # raises: not a class model
        if prompts:
            texts = [prompts[i % len(prompts)] for i in range(num)]
            return encode_prompts(task, texts), texts
    return task.conditions(num)


def sample_command(run_dir, classes=None, prompts=None, n: int = 16, steps: int = 50,
                   cfg_scale: float = 3.0, sampler: str | None = None, seed: int = 0,
                   out="grid.png", out_dir=None, cols: int | None = None,
                   progress: bool = True, vae=None) -> torch.Tensor:
    """Sample `n` images (classes / prompts cycled over them), write a grid PNG to `out` and,
    with `out_dir`, one PNG per image; returns the images (n, C, H, W) in [-1, 1].

    Defaults: every class in turn (class runs), the first shapes test captions (caption runs);
    the run's sampler. A latent run decodes with its autoencoder (`vae` overrides the folder
    it trained with). An unknown class name or a word outside the vocabulary is a ValueError
    naming it and listing the valid ones; so are, before anything is sampled, a guidance scale
    that is not a finite number >= 0, more images than memory or a PNG grid can hold, and an
    output folder that cannot be written. Images are sampled in chunks of the run's
    sample_batch_size, with a progress bar over the images.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"--n: expected an int >= 1, got {n!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps: expected an int >= 1, got {steps!r}")
    cfg_scale = check_cfg_scale(cfg_scale, "--cfg")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -2**63 <= seed < 2**64:
        raise ValueError(f"--seed: expected an int in [-2**63, 2**64) (torch's seeds), "
                         f"got {seed!r}")
    model, task, config = load_generator(run_dir, vae=vae)
    sampler = sampler or task.sampler
    try:  # the objective the run trained with decides the samplers it can use
        create_sampler(sampler, task.objective, steps=steps, **task.sampler_args(sampler))
    except ValueError as e:
        raise ValueError(f"--sampler {sampler!r}: {e}") from None
    # Sizes and files first: nothing is sampled that could not be kept or written.
    check_fits(n, task.image_shape, "--n")
    if out:
        image_format(out, "--out")
        check_grid(n, task.image_shape, cols, what="--n")
        _check_writable(Path(out).parent, "--out", out)
    if out_dir:
        _check_writable(Path(out_dir), "--out-dir", out_dir)
    cond, labels = conditions(task, n, classes=classes, prompts=prompts)  # checks names, words
    device = torch.device("cuda" if torch.cuda.is_available() and not config.train.cpu
                          else "cpu")
    model.to(device)
    # As the run trained (tiny models run faster on one thread), for the sampling only.
    with torch_threads(config.train.threads):
        images = task.sample_images(model, cond, n, seed, progress=progress,
                                    autocast=config.train.precision != "fp32",
                                    cfg_scale=cfg_scale, steps=steps, sampler=sampler)
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
