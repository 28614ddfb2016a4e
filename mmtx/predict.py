"""Trained vision-language models on a user's images: `mmtx caption` and `mmtx zeroshot`.

    mmtx caption runs/vl/captioner img1.png img2.png --beam 3 --attn words.png
    mmtx zeroshot runs/vl/clip img1.png --labels circle,square,triangle

A run directory is what `mmtx train` wrote (config.yaml, model.json, model.safetensors and the
task's tokenizer.json). Images are read with PIL, resized to the model's input size and
normalised as the run's training data was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .data import load_tokenizer
from .data.base import load_rgb, not_a_file
from .data.transforms import STATS, build_transforms
from .train.run import load_run


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
    path is checked before any is read: a missing one, a folder, a FIFO or an image of too many
    pixels is one error naming it."""
    from PIL import Image

    spec = json.loads((Path(run_dir) / "model.json").read_text())["args"]
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
    for p in paths:
        img = load_rgb(p, mode)
        if STATS[name].kind != "folder":  # those transforms resize only from their own size
            img = img.resize((size, size), Image.BILINEAR)
        out.append(transform(img))
    return torch.stack(out)


def caption_command(run_dir, images, beam: int = 1, attn_out=None) -> list[str]:
    """Print one caption per image; with attn_out, draw each word's attention over the image."""
    model, cfg, tokenizer = _load(run_dir, "captioning")
    x = read_images(images, run_dir, cfg)
    captions, maps = model.caption(x, beam_size=beam, tokenizer=tokenizer, return_attn=True)
    for path, text in zip(images, captions):
        print(f"{path}: {text}")
    if attn_out:
        from .viz.attention import plot_word_attention

        plot_word_attention(x, captions, maps, attn_out)
        print(f"attention: {attn_out}")
    return captions


def zeroshot_command(run_dir, images, labels: list[str], template: str = "{}") -> list[list]:
    """Print, per image, the labels ranked by the model's image-text similarity."""
    if not labels:
        raise ValueError("--labels: expected a comma-separated list of class names, got none")
    if "{}" not in template:
        raise ValueError(f"--template: expected a text with {{}} where the label goes, "
                         f"got {template!r}")
    model, cfg, tokenizer = _load(run_dir, "contrastive")
    for label in labels:
        for word in tokenizer.encode(template.format(label), add_special=False):
            if word == tokenizer.unk_id:
                known = [w for w in getattr(tokenizer, "itos", []) if not w.startswith("<")]
                raise ValueError(f"--labels: {label!r} has a word outside the model's "
                                 f"vocabulary; known words: {', '.join(known)}")
    x = read_images(images, run_dir, cfg)
    with torch.no_grad():
        classes = model.zero_shot_classifier(labels, [template], tokenizer)  # (C, D)
        probs = (model.scale() * model.encode_image(x) @ classes.T).softmax(-1)  # (N, C)
    ranked = []
    for path, p in zip(images, probs):
        order = p.argsort(descending=True).tolist()
        ranked.append([(labels[i], float(p[i])) for i in order])
        print(f"{path}: " + ", ".join(f"{labels[i]} {100 * float(p[i]):.1f}%" for i in order))
    return ranked
