"""The judge of generated images: a small CNN, trained on real images only, that reads each
shapes object's shape, colour and size, or a digit's class (scikit-learn's digits, upscaled).

It is independent of every generator in mmtx: its own plain PyTorch layers (no mmtx.layers, no
mmtx.models), trained by its own loop on real `ShapesDataset` / `DigitsDataset` images (the
digits' train split), never on generated ones. Two measures come from it:

- `cond_acc_<attribute>`: the fraction of generated images whose shape / colour / size the judge
  reads as the one asked for (`predict`), next to the judge's own accuracy on real test images,
  the ceiling (`Judge.ceiling`);
- `fd_shapes` (`fd_digits`): the Frechet distance between judge features (`features`, the
  penultimate layer) of generated and real images (mmtx.eval.generation.frechet_report). It is
  not FID.

    judge = load_judge(ShapesDataset(task="shape_colour"))   # trains once, then cached
    judge.predict(images)        # {"shape": (B, 6), "colour": (B, 8), "size": (B, 2)} logits
    judge.features(images)       # (B, 128)
    judge.ceiling                # {"shape": 1.0, "colour": 1.0, "size": 0.99...} on real test
    digits = load_judge({"data": "digits", "image_size": 16})   # one head: "class" ("0".."9")

A judge is trained once per data configuration (image size, shapes, colours, jitter, noise,
clutter, background; for digits the image size) and training recipe, and cached as
$MMTX_CACHE/judges/<config hash>.safetensors (default ~/.cache/mmtx/judges/), written atomically;
its configuration and ceiling travel in the file's metadata. Images are in [-1, 1] (the shapes
dataset's normalisation, and the digits' with normalize="symmetric"); inputs are clamped to it,
as saving them as PNG would.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.digits import DigitsDataset
from ..data.render import COLOURS, SHAPES
from ..data.shapes import ShapesDataset
from ..io import atomic_path
from ..keys import check_keys
from .generation import conditional_accuracy

ATTRIBUTES = ("shape", "colour", "size")
SIZES = ("small", "large")
VERSION = 1  # bump when the architecture or the training loop changes: new cache key
# What a shapes image looks like depends on these dataset options; the judge's key holds them.
DATA_KEYS = ("image_size", "shapes", "colours", "colour_jitter", "noise", "clutter", "background")
DIGITS_KEYS = ("data", "image_size")  # a digits judge's key: the data's name and the side
DATA = ("shapes", "digits")


def default_cache_dir() -> Path:
    """$MMTX_CACHE/judges, else ~/.cache/mmtx/judges."""
    return Path(os.environ.get("MMTX_CACHE", "~/.cache/mmtx")).expanduser() / "judges"


def _digits_config(dataset, overrides: dict) -> dict:
    check_keys(overrides, DIGITS_KEYS, "judge data option", of="digits")
    if dataset is not None and dataset.normalize != "symmetric":
        raise ValueError(f"data.args.normalize: the digits judge reads images in [-1, 1]; "
                         f"expected 'symmetric', got {dataset.normalize!r}")
    size = overrides.get("image_size", 8 if dataset is None else dataset.image_size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ValueError(f"image_size: expected an int >= 4 for the digits judge, got {size!r}")
    return {"data": "digits", "image_size": int(size)}


def judge_data_config(dataset=None, **overrides) -> dict:
    """The image options a judge is trained for, from a ShapesDataset or DigitsDataset (or a
    subset of one) and overrides; without a dataset, the shapes defaults, or with
    data="digits" the digits at `image_size` (default 8). A shapes configuration carries no
    "data" key (its cache key is unchanged since the judge judged shapes only)."""
    data = overrides.pop("data", "shapes")
    if data not in DATA:
        raise ValueError(f"data: expected one of {', '.join(DATA)}, got {data!r}")
    base = getattr(dataset, "base", dataset)
    if isinstance(base, DigitsDataset) or (dataset is None and data == "digits"):
        return _digits_config(base, overrides)
    if dataset is not None and not all(hasattr(dataset, k) for k in DATA_KEYS):
        raise ValueError(f"dataset: expected a DigitsDataset, or a ShapesDataset (or a subset "
                         f"of one) with "
                         f"{', '.join(DATA_KEYS)}, got {type(dataset).__name__}")
    cfg = {"image_size": 32, "shapes": list(SHAPES), "colours": list(COLOURS),
           "colour_jitter": 0.05, "noise": 0.0, "clutter": 0, "background": [0.0, 0.0, 0.0]}
    if dataset is not None:
        cfg.update({k: getattr(dataset, k) for k in DATA_KEYS})
    check_keys(overrides, DATA_KEYS, "judge data option")
    cfg.update(overrides)
    # One canonical, JSON-able form: the hash must not depend on tuples vs lists or int vs float.
    return {"image_size": int(cfg["image_size"]), "shapes": [str(s) for s in cfg["shapes"]],
            "colours": [str(c) for c in cfg["colours"]],
            "colour_jitter": float(cfg["colour_jitter"]), "noise": float(cfg["noise"]),
            "clutter": int(cfg["clutter"]), "background": [float(b) for b in cfg["background"]]}


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def judge_names(config: dict) -> dict[str, list[str]]:
    """{attribute: class names} the judge of `config` (judge_data_config) reads."""
    if config.get("data") == "digits":
        return {"class": [str(d) for d in range(10)]}
    return {"shape": list(config["shapes"]), "colour": list(config["colours"]),
            "size": list(SIZES)}


class Judge(nn.Module):
    """A small CNN with one head per attribute; see the module docstring.

    names: {attribute: class names} (judge_names); default the shapes' shape, colour and size
    from `shapes` and `colours`. images (B, in_chans, H, W) in [-1, 1] -> a stride-2 conv stem
    and three convs (width, width, 2 width, 2 width channels; a max-pool between) -> mean and
    max over the (H/4, W/4) map -> Linear + ReLU: the features (B, feature_dim) -> one Linear
    head per attribute. Mean and max pooling both: the mean carries how much of the image an
    object covers (its size), the max the sharpest local evidence (corners, points). Small on
    purpose: it trains in well under a minute on a CPU and is still right on (nearly) every real
    test image.
    """

    def __init__(self, shapes=SHAPES, colours=tuple(COLOURS), in_chans: int = 3, width: int = 32,
                 feature_dim: int = 128, names: dict[str, list[str]] | None = None):
        super().__init__()
        self.names = ({a: list(n) for a, n in names.items()} if names is not None else
                      {"shape": list(shapes), "colour": list(colours), "size": list(SIZES)})
        self.trunk = nn.Sequential(
            _conv(in_chans, width, stride=2), _conv(width, width),  # (B, w, H/2, W/2)
            nn.MaxPool2d(2), _conv(width, 2 * width), _conv(2 * width, 2 * width))  # H/4
        self.fc = nn.Linear(4 * width, feature_dim)
        self.heads = nn.ModuleDict({a: nn.Linear(feature_dim, len(n))
                                    for a, n in self.names.items()})
        self.config: dict = {}
        self.ceiling: dict[str, float] = {}
        self.from_cache = False  # whether load_judge read it from the cache (True) or trained it
        self.init_weights()

    def init_weights(self) -> None:
        # Kaiming for the ReLU convs (torchvision's ResNet init); default Linear init otherwise.
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @classmethod
    def for_config(cls, config: dict, width: int = 32) -> Judge:
        """An untrained judge for `config` (judge_data_config): its heads and channels."""
        return cls(names=judge_names(config), width=width,
                   in_chans=1 if config.get("data") == "digits" else 3)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, feature_dim): the penultimate layer (for fd_*)."""
        if images.dim() != 4:
            raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
        h = self.trunk(images.float().clamp(-1, 1))  # (B, 2w, H/4, W/4)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3))], dim=1)  # (B, 4w)
        return F.relu(self.fc(pooled))

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, C, H, W) -> {attribute: (B, classes)} logits: shapes {"shape": (B, S),
        "colour": (B, C), "size": (B, 2)}, digits {"class": (B, 10)}."""
        f = self.features(images)
        return {a: head(f) for a, head in self.heads.items()}

    forward = predict

    def feature_extractor(self) -> nn.Module:
        """A module mapping images to `features`, for mmtx.eval.generation.frechet_report."""
        return _Features(self)

    def targets(self, objects) -> dict[str, torch.Tensor]:
        """Attribute dicts (an item's attributes["objects"][0], or {shape, colour, size} with
        any subset of keys; digits {class}) -> {attribute: (N,) class ids}; unknown names are
        a ValueError."""
        out = {}
        for attr, names in self.names.items():
            values = [o[attr] for o in objects if attr in o]
            if not values:
                continue
            if len(values) != len(objects):
                raise ValueError(f"targets: {attr!r} is given for some objects, not all")
            bad = sorted({v for v in values if v not in names})
            if bad:
                raise ValueError(f"targets: unknown {attr} {bad}; the judge knows {names}")
            out[attr] = torch.tensor([names.index(v) for v in values])
        return out

    @torch.no_grad()
    def accuracy(self, images: torch.Tensor, targets: dict[str, torch.Tensor],
                 batch_size: int = 256) -> dict[str, float]:
        """{attribute: fraction read as `targets`} (plus "all" with several attributes), in
        eval mode and fp32 whatever autocast is on outside."""
        was_training = self.training
        self.eval()
        try:
            with torch.autocast(images.device.type, enabled=False):
                return conditional_accuracy(_Heads(self, list(targets)), images, targets,
                                            batch_size=batch_size)
        finally:
            self.train(was_training)


class _Features(nn.Module):
    """judge.features as a module. The judge is held outside the module tree, so the eval/train
    switching of a caller (frechet_report) never reaches it: it stays in eval mode."""

    def __init__(self, judge: Judge):
        super().__init__()
        object.__setattr__(self, "judge", judge)  # not a submodule, on purpose

    def forward(self, images):
        with torch.autocast(images.device.type, enabled=False):
            return self.judge.features(images)


class _Heads(nn.Module):
    """The judge's heads for some attributes only (what a generator was asked for); the judge is
    held outside the module tree, as in _Features."""

    def __init__(self, judge: Judge, attributes: list[str]):
        super().__init__()
        object.__setattr__(self, "judge", judge)
        self.attributes = attributes

    def forward(self, images):
        out = self.judge.predict(images)
        return {a: out[a] for a in self.attributes}


# ---- real data -------------------------------------------------------------------------------

def real_images(config: dict, split: str, num_samples: int, seed: int = 0):
    """(images (N, C, H, W) float in [-1, 1], objects: list of attribute dicts) of one-object
    real scenes drawn with the judge's data options; for digits the first `num_samples` of the
    split's real digits (at most the whole split: its split is fixed, `seed` plays no part)."""
    if config.get("data") == "digits":
        ds = DigitsDataset(split, image_size=config["image_size"], normalize="symmetric")
        n = min(num_samples, len(ds))
        return ds.images[:n] * 2 - 1, [{"class": str(y)} for y in ds.labels[:n]]  # (N, 1, S, S)
    ds = ShapesDataset(num_samples, image_size=config["image_size"], split=split, seed=seed,
                       task="shape", num_objects=1, shapes=config["shapes"],
                       colours=config["colours"], noise=config["noise"],
                       clutter=config["clutter"], colour_jitter=config["colour_jitter"],
                       background=tuple(config["background"]))
    side = config["image_size"]
    pixels = np.empty((num_samples, side, side, 3), dtype=np.uint8)
    objects = []
    for i in range(num_samples):
        pixels[i], objs = ds.render_uint8(i)
        objects.append({"shape": objs[0].shape, "colour": objs[0].colour, "size": objs[0].size})
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().mul_(2 / 255).sub_(1)
    return images, objects


# ---- training and the cache ------------------------------------------------------------------

TRAIN_DEFAULTS = {"train_samples": 4000, "test_samples": 2000, "epochs": 3, "batch_size": 64,
                  "lr": 3e-3, "width": 32, "seed": 0}
# Digits: the whole train split (1,257 images; the sample counts cap at the split), so more
# passes over fewer images; the ceiling is read on the whole test split (359).
DIGITS_DEFAULTS = {**TRAIN_DEFAULTS, "train_samples": 1257, "test_samples": 359, "epochs": 30}


def train_defaults(config: dict) -> dict:
    """The training recipe load_judge uses for `config` where the caller gives none."""
    return dict(DIGITS_DEFAULTS if config.get("data") == "digits" else TRAIN_DEFAULTS)


def judge_key(config: dict, recipe: dict) -> str:
    blob = json.dumps({"data": config, "recipe": recipe, "version": VERSION}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def train_judge(config: dict, *, train_samples: int = 4000, test_samples: int = 2000,
                epochs: int = 3, batch_size: int = 64, lr: float = 3e-3, width: int = 32,
                seed: int = 0, progress: bool = True) -> Judge:
    """Train a judge on real images of `config` (judge_data_config); sets `judge.ceiling`, its
    accuracy per attribute on `test_samples` real test images (digits: the test split). Plain
    loop: AdamW, one-cycle lr, cross-entropy summed over the heads, light pixel noise so slightly
    noisy samples read as their clean originals."""
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)  # the init; the caller's RNG is restored below
    try:
        judge = Judge.for_config(config, width=width)
    finally:
        torch.set_rng_state(torch_state)
    judge.config = dict(config)
    images, objects = real_images(config, "train", train_samples, seed=seed)
    targets = judge.targets(objects)
    train_samples = len(images)  # digits: at most the split
    steps = epochs * (train_samples // batch_size)
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                pct_start=0.15)
    judge.train()
    what = config.get("data", "shapes")
    bar = tqdm(total=steps, desc=f"training the {what} judge", disable=not progress, leave=False)
    # Callers may be inside no_grad or autocast (an engine's evaluation): train in fp32 with grad.
    with torch.enable_grad(), torch.autocast("cpu", enabled=False):
        for _ in range(epochs):
            order = torch.randperm(train_samples, generator=g)
            for k in range(train_samples // batch_size):
                idx = order[k * batch_size:(k + 1) * batch_size]
                x = images[idx]
                noisy = torch.rand(len(idx), 1, 1, 1, generator=g) < 0.5
                x = x + noisy * 0.08 * torch.randn(x.shape, generator=g)  # (B, C, H, W)
                out = judge.predict(x)
                loss = sum(F.cross_entropy(out[a], targets[a][idx]) for a in out)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    judge.eval()
    test_images, test_objects = real_images(config, "test", test_samples, seed=seed)
    acc = judge.accuracy(test_images, judge.targets(test_objects))
    judge.ceiling = {a: acc[a] for a in judge.names}
    return judge


def save_judge(judge: Judge, path: str | Path, recipe: dict | None = None) -> Path:
    """Weights as safetensors with the configuration, recipe and ceiling as metadata; written
    to a temporary file in the same folder, then renamed into place (atomic)."""
    path = Path(path)
    meta = {"config": json.dumps(judge.config), "ceiling": json.dumps(judge.ceiling),
            "recipe": json.dumps(recipe or {}), "version": str(VERSION)}
    tensors = {k: v.detach().contiguous().clone() for k, v in judge.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_judge(path: str | Path) -> Judge:
    """A judge from a file written by `save_judge` (safetensors: nothing is unpickled)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"judge file {str(path)!r} does not exist")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"judge file {str(path)!r} has no judge metadata (config, ceiling)")
    config, recipe = json.loads(meta["config"]), json.loads(meta.get("recipe", "{}"))
    judge = Judge.for_config(config, width=recipe.get("width", TRAIN_DEFAULTS["width"]))
    judge.load_state_dict(load_file(str(path)))
    judge.config, judge.ceiling = config, json.loads(meta["ceiling"])
    return judge.eval()


def load_judge(data=None, *, cache_dir: str | Path | None = None, progress: bool = True,
               **recipe) -> Judge:
    """The judge for a data configuration: read from the cache, or trained (seconds to a minute
    on a CPU) and cached.

    data: a ShapesDataset or DigitsDataset (or a subset of one), a dict of judge_data_config
    options ({"data": "digits", "image_size": 16} for digits), or None (the shapes defaults at
    32 px). cache_dir: default $MMTX_CACHE/judges or
    ~/.cache/mmtx/judges. recipe: train_judge options (train_samples, test_samples, epochs,
    batch_size, lr, width, seed; defaults per data: train_defaults); each is part of the cache
    key. `judge.from_cache` tells
    whether it was read (True) or trained (False).
    """
    check_keys(recipe, TRAIN_DEFAULTS, "judge training option")
    config = judge_data_config(**data) if isinstance(data, dict) else judge_data_config(data)
    recipe = {**train_defaults(config), **recipe}
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{judge_key(config, recipe)}.safetensors"
    if path.is_file():
        judge = read_judge(path)
        judge.from_cache = True
        return judge
    tic = time.perf_counter()
    judge = train_judge(config, progress=progress, **recipe)
    if progress:
        shown = ", ".join(f"{a} {v:.1%}" for a, v in judge.ceiling.items())
        tqdm.write(f"{config.get('data', 'shapes')} judge trained in "
                   f"{time.perf_counter() - tic:.0f} s; accuracy on real test images: {shown}; "
                   f"cached at {path}")
    save_judge(judge, path, recipe)
    return judge
