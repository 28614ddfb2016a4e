"""A finished run read back: its config, its model (the EMA weights when it kept an EMA) and
the task that trained it, for commands that use a trained model (`mmtx caption`, ...)."""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from ..data import load_tokenizer
from ..io import read_utf8
from ..models.registry import create_model
from .checkpoint import load_weights
from .config import Config, load_config
from .tasks import Task, create_task


def load_run(run_dir) -> tuple[nn.Module, Config, Task]:
    """(model in eval mode, config, task) of the finished run in `run_dir`.

    The model is rebuilt from `model.json` (its registered name and every keyword it was
    built with, those the task derived from the data included) and loaded from
    `model.safetensors`, which holds the EMA weights when the run kept an EMA."""
    run_dir = Path(run_dir)
    for name in ("config.yaml", "model.json", "model.safetensors"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"run_dir {str(run_dir)!r}: no {name}; expected the "
                                    f"directory of a finished `mmtx train` run")
    cfg = load_config(run_dir / "config.yaml")
    spec = read_json(run_dir / "model.json")
    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str)
            and isinstance(spec.get("args"), dict)):
        raise ValueError(f"{run_dir / 'model.json'}: expected {{\"name\": ..., \"args\": "
                         f"{{...}}}} as `mmtx train` writes it, got {str(spec)[:80]}")
    model = load_weights(create_model(spec["name"], **spec["args"]),
                         run_dir / "model.safetensors")
    return model.eval(), cfg, create_task(cfg.task.name, **cfg.task.args)


def read_json(path):
    """The JSON in `path`; a file that is not JSON is a ValueError naming it."""
    try:
        return json.loads(read_utf8(path, "JSON file"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def load_generator(run_dir, vae=None) -> tuple[nn.Module, Task, Config]:
    """(model in eval mode, its task with the training data's state restored, config). `vae`:
    the AutoencoderKL folder of a latent run, when not where it was at training."""
    run_dir = Path(run_dir)
    model, cfg, task = load_run(run_dir)
    if cfg.task.name != "generation":
        raise ValueError(f"run_dir {str(run_dir)!r} trained task {cfg.task.name!r}; mmtx sample "
                         f"needs a 'generation' run")
    spec = run_dir / "generation.json"
    if not spec.is_file():
        raise FileNotFoundError(f"run_dir {str(run_dir)!r}: no generation.json (written when a "
                                f"generation run finishes)")
    task.restore(read_json(spec), vae=vae, where=str(spec))  # checks its keys
    task.check_model_args(read_json(run_dir / "model.json")["args"], str(spec))
    tok = run_dir / "tokenizer.json"
    if task.cond == "caption" and tok.is_file():
        task.tokenizer = load_tokenizer(tok)
    return model, task, cfg
