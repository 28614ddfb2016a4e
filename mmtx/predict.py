"""Trained vision-language models on a user's images: `mmtx caption` and `mmtx zeroshot`.

    mmtx caption runs/vl/captioner img1.png img2.png --beam 3 --attn words.png
    mmtx zeroshot runs/vl/clip img1.png --labels circle,square,triangle

A run directory is what `mmtx train` wrote (config.yaml, model.json, model.safetensors and the
task's tokenizer.json). Images are read with PIL, resized to the model's input size and
normalised as the run's training data was.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch
from tqdm import tqdm

from .data import load_tokenizer
from .data.base import load_rgb, not_a_file
from .data.transforms import STATS, build_transforms
from .train.run import load_run, read_json

BATCH = 64  # images per forward pass
MAX_ATTN_IMAGES = 16  # rows of the --attn figure (one per image); more would not be readable


def _load(run_dir, task: str):
    model, cfg, _ = load_run(run_dir)
    if cfg.task.name != task:
        raise ValueError(f"run_dir {str(run_dir)!r} trained task {cfg.task.name!r}; this "
                         f"command needs a {task!r} run")
    tok = Path(run_dir) / "tokenizer.json"
    if not tok.is_file():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r}: no tokenizer.json (written when a "
                                f"{task} run finishes)")
    return model, cfg, load_tokenizer(tok)


def read_images(paths, run_dir, cfg) -> torch.Tensor:
    """(N, C, H, W) images, each resized and normalised as the run's training data. Every
    path is checked before any is read (a missing one, a folder, a FIFO is one error naming
    it), then each is read (one that is no image, or has too many pixels, likewise)."""
    from PIL import Image

    spec = read_json(Path(run_dir) / "model.json")["args"]
    size = spec.get("img_size", 32)
    size = size if isinstance(size, int) else size[0]
    name = cfg.data.name if cfg.data.name in STATS else "image_folder"
    transform = build_transforms(name, "none", size, train=False)
    mode = "RGB" if spec.get("in_chans", 3) == 3 else "L"
    for p in paths:
        problem = not_a_file(p)
        if problem == "file not found":
            raise FileNotFoundError(f"image {str(p)!r} does not exist")
        if problem is not None:
            raise ValueError(f"image {str(p)!r} {problem}")
    out = []
    for p in tqdm(paths, desc="reading images", disable=len(paths) <= BATCH, leave=False):
        img = load_rgb(p, mode)
        if STATS[name].kind != "folder":  # those transforms resize only from their own size
            img = img.resize((size, size), Image.BILINEAR)
        out.append(transform(img))
    return torch.stack(out)


def _batches(n: int, what: str):
    """Slices of BATCH items over n, with a progress bar when there is more than one."""
    starts = range(0, n, BATCH)
    for start in tqdm(starts, desc=what, unit="batch", disable=len(starts) < 2, leave=False):
        yield slice(start, start + BATCH)


def _check_attn_out(attn_out, images) -> None:
    """Before any model is loaded: a figure of at most MAX_ATTN_IMAGES rows, in a format
    matplotlib writes, into a folder this process may write."""
    from .viz.plots import plt

    if len(images) > MAX_ATTN_IMAGES:
        raise ValueError(f"--attn: draws one row per image, at most {MAX_ATTN_IMAGES}, got "
                         f"{len(images)} images; caption the others without --attn")
    folder = Path(attn_out).parent
    while not folder.exists() and folder != folder.parent:  # the part that exists
        folder = folder.parent
    if not os.access(folder, os.W_OK):  # a read-only file system says so even to root
        raise ValueError(f"--attn: cannot write {str(attn_out)!r}: {folder} is read-only "
                         f"(or not writable by this user)")
    suffix = Path(attn_out).suffix[1:].lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if suffix and suffix not in formats:
        raise ValueError(f"--attn: expected a file name ending in .png (or {', '.join(formats)}"
                         f"), got {str(attn_out)!r}")


def caption_command(run_dir, images, beam: int = 1, attn_out=None) -> list[str]:
    """Print one caption per image; with attn_out, draw each word's attention over the image."""
    if attn_out:
        _check_attn_out(attn_out, images)
    model, cfg, tokenizer = _load(run_dir, "captioning")
    x = read_images(images, run_dir, cfg)
    captions, maps = [], []
    with torch.no_grad():
        for part in _batches(len(x), "captioning"):
            text, attn = model.caption(x[part], beam_size=beam, tokenizer=tokenizer,
                                       return_attn=True)
            captions += text
            maps.append(attn)
    for path, text in zip(images, captions):
        print(f"{path}: {text}")
    if attn_out:
        from .viz.attention import plot_word_attention

        plot_word_attention(x, captions, maps[0], attn_out)  # one batch: <= MAX_ATTN_IMAGES
        print(f"attention: {attn_out}")
    return captions


def check_labels(labels: list[str], template: str) -> None:
    """--labels: at least one, each once; --template: one {} where each label goes."""
    if not labels:
        raise ValueError("--labels: expected a comma-separated list of class names, got none")
    seen = set()
    for label in labels:
        if label in seen:
            raise ValueError(f"--labels: {label!r} is given twice; each label once, please "
                             f"(a repeated label splits its probability)")
        seen.add(label)
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:  # a lone { or }
        fields = [f"({e})"]
    if fields != [""]:
        raise ValueError(f"--template: expected a text with one {{}} where the label goes "
                         f"(write {{{{ and }}}} for literal braces), got {template!r}")


def zeroshot_command(run_dir, images, labels: list[str], template: str = "{}") -> list[list]:
    """Print, per image, the labels ranked by the model's image-text similarity."""
    check_labels(labels, template)
    model, cfg, tokenizer = _load(run_dir, "contrastive")
    prompts = {}  # token ids -> the label that gave them
    for label in labels:
        ids = tuple(tokenizer.encode(template.format(label), add_special=False))
        if tokenizer.unk_id in ids:
            known = [w for w in getattr(tokenizer, "itos", []) if not w.startswith("<")]
            raise ValueError(f"--labels: {label!r} has a word outside the model's "
                             f"vocabulary; known words: {', '.join(known)}")
        if ids in prompts:  # e.g. "Circle" and "circle" for a lower-casing tokenizer
            raise ValueError(f"--labels: {prompts[ids]!r} and {label!r} are the same prompt "
                             f"to the model's tokenizer; give each label once")
        prompts[ids] = label
    x = read_images(images, run_dir, cfg)
    with torch.no_grad():
        classes = model.zero_shot_classifier(labels, [template], tokenizer)  # (C, D)
        features = torch.cat([model.encode_image(x[part])
                              for part in _batches(len(x), "encoding images")])  # (N, D)
        probs = (model.scale() * features @ classes.T).softmax(-1)  # (N, C)
    ranked = []
    for path, p in zip(images, probs):
        order = p.argsort(descending=True).tolist()
        ranked.append([(labels[i], float(p[i])) for i in order])
        print(f"{path}: " + ", ".join(f"{labels[i]} {100 * float(p[i]):.1f}%" for i in order))
    return ranked
