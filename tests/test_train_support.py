"""Tiny stand-ins for the engine tests: an in-memory dataset and small registered models.

Imported by the engine tests and by the scripts they run in subprocesses (kill/resume, DDP).
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn

from mmtx.layers import PatchEmbed, Transformer
from mmtx.models import registry


class QuadrantDataset(torch.utils.data.Dataset):
    """Class = the quadrant holding a bright square, on noise. Deterministic from `seed`.

    `augment` adds random noise per item from the global torch RNG (what the engine must
    make reproducible); `delay` (seconds per item) slows training for the kill test.
    """

    def __init__(self, n=96, image_size=8, in_chans=1, seed=0, augment=False, delay=0.0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g)
        images = 0.3 * torch.randn(n, in_chans, image_size, image_size, generator=g)
        h = image_size // 2
        for i, y in enumerate(self.labels.tolist()):
            r, c = divmod(y, 2)
            images[i, :, r * h:(r + 1) * h, c * h:(c + 1) * h] += 1.0
        self.images = images
        self.num_classes, self.in_chans, self.image_size = 4, in_chans, image_size
        self.class_names = ["top-left", "top-right", "bottom-left", "bottom-right"]
        self.augment, self.delay = augment, delay

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        image = self.images[i]
        if self.augment:
            image = image + 0.1 * torch.randn_like(image)
        return {"image": image, "label": int(self.labels[i])}


def splits(n_train=96, n_eval=40, augment=False, delay=0.0, **kw):
    return {"train": QuadrantDataset(n_train, seed=0, augment=augment, delay=delay, **kw),
            "val": QuadrantDataset(n_eval, seed=1, **kw),
            "test": QuadrantDataset(n_eval, seed=2, **kw)}


class TinyMLP(nn.Module):
    def __init__(self, num_classes=4, in_chans=1, img_size=8, hidden=32, dropout=0.1,
                 nan_at_call=None):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_chans * img_size * img_size, hidden),
                                 nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_classes))
        self.nan_at_call, self.calls = nan_at_call, 0

    def forward(self, x):
        out = self.net(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at_call:  # simulate a diverged step
                out = out * float("nan")
        return out


class TinyViT(nn.Module):
    """Patch embedding + a position table + cls token + mmtx.layers.Transformer."""

    def __init__(self, num_classes=4, in_chans=1, img_size=8, dim=16, depth=1):
        super().__init__()
        self.patch = PatchEmbed(img_size, 4, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(0.02 * torch.randn(1, self.patch.num_patches + 1, dim))
        self.blocks = Transformer(depth, dim, num_heads=2)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch(x)  # (B, N, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.blocks(x)[:, 0])


def _register(name, cls):
    if name not in registry.list_models(name):  # idempotent: test modules may be imported twice
        def factory(**kw):
            return cls(**kw)
        factory.__name__ = name
        registry.register_model(factory)


_register("test_tiny_mlp", TinyMLP)
_register("test_tiny_vit", TinyViT)


def tiny_config(**train):
    """A config dict for the tiny runs (each a couple of seconds on one core)."""
    cfg = {
        "model": {"name": "test_tiny_mlp"},
        "data": {"name": "in-memory", "batch_size": 16},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"max_steps": 12, "eval_every": 6, "log_every": 2, "checkpoint_every": 4,
                  "keep_last": 2, "seed": 0},
        "logging": {"progress": False},
    }
    cfg["train"].update(train)
    return cfg


def run_in_subprocess_env(root) -> dict:
    """Environment for `python tests/test_train_support.py ...` (and torchrun of it)."""
    import os
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1", WANDB_MODE="offline",
               WANDB_SILENT="true")
    return env


def _main(argv) -> int:
    """python tests/test_train_support.py RUN_DIR CONFIG_JSON DATA_JSON: train with tiny data."""
    import json

    from mmtx.train import NonFiniteLossError, TrainingInterrupted, train

    torch.set_num_threads(1)
    run_dir, cfg, data_kw = argv[0], json.loads(argv[1]), json.loads(argv[2])
    try:
        result = train(cfg, run_dir=run_dir, data=splits(**data_kw), resume="auto")
    except TrainingInterrupted as e:
        return 128 + e.signum  # 130 for SIGINT, 143 for SIGTERM, as `mmtx train`
    except NonFiniteLossError as e:
        print(e)
        return 1
    print("FINAL", json.dumps({k: v for k, v in result.items()
                               if isinstance(v, (int, float, str))}), flush=True)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_main(sys.argv[1:]))
