"""Checkpoints: weights as safetensors, optimizer/scheduler/RNG through Accelerate's save_state,
our own step, data position and W&B run id as JSON. Each is written into a temporary directory
that is renamed into place only when complete, so a crash mid-save leaves the previous
checkpoint intact. Nothing here unpickles: torch.load only ever runs with weights_only=True
(inside Accelerate's load_state and in `load_weights`).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, load_model, save_file, save_model

from ..io import WriteError, atomic_path, write_error, write_json

STATE_FILE = "train_state.json"  # written last: its presence marks a complete checkpoint
_NAME = re.compile(r"^step_(\d+)$")


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as (step, path), oldest first. Temporary dirs are never listed."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = _NAME.match(path.name)
        if m and (path / STATE_FILE).is_file():
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def save_checkpoint(accelerator, run_dir: str | Path, step: int, state: dict, *, ema=None,
                    keep_last: int = 2) -> Path:
    """Save on every process (each writes its RNG state), rename on the main process."""
    root = checkpoints_dir(run_dir)
    final = root / f"step_{step:08d}"
    if final.is_dir() and (final / STATE_FILE).is_file():
        return final  # this step is already saved (e.g. periodic save, then the end of training)
    tmp = root / f".tmp-step_{step:08d}"
    try:
        if accelerator.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a crash during an earlier save
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()  # every process's RNG file is in tmp before the rename
        if accelerator.is_main_process:
            if ema is not None:
                save_file(_contiguous(ema.module.state_dict()), str(tmp / "ema.safetensors"))
            write_json(tmp / STATE_FILE, state)
            os.replace(tmp, final)  # atomic on one filesystem
    except Exception as e:  # a full disk, most often: leave no half-written checkpoint
        error = write_error(final, e)
        shutil.rmtree(tmp, ignore_errors=True)
        if error is None:
            raise
        last = latest_checkpoint(run_dir)
        raise WriteError(error.errno, f"{error}; the last complete checkpoint is "
                                      f"{last or 'none'}", error.filename) from None
    if accelerator.is_main_process:
        for _, old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: str | Path, *, ema=None) -> dict:
    """Restore model, optimizer, scheduler, RNG (and EMA) from `path`; return our state dict.
    A file that does not load is a ValueError naming it and the older checkpoint, if any."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} is incomplete: no {STATE_FILE}")
    try:
        state = json.loads(state_file.read_text())
    except ValueError as e:  # JSON or UTF-8 decoding
        raise _unreadable(path, state_file, e) from None
    problem = _bad_state(state, path)
    if problem:
        raise _unreadable(path, state_file, problem)
    # Accelerate's load_state logs a random-state file that does not load and goes on, so a
    # damaged one would resume with other random streams without a word: check it here.
    rng = path / f"random_states_{accelerator.process_index}.pkl"
    if not rng.is_file():
        saved = len(list(path.glob("random_states_*.pkl")))
        raise ValueError(f"checkpoint {str(path)!r}: no {rng.name}; it holds the random states "
                         f"of {saved} process(es): resume with as many")
    try:
        _load_rng(rng)
        accelerator.load_state(str(path))
        if ema is not None and (path / "ema.safetensors").is_file():
            ema.module.load_state_dict(load_file(str(path / "ema.safetensors"), device="cpu"))
    except Exception as e:
        # Which file failed is not in the error; look at each on its own (only on this path).
        file, reason = _first_bad_file(path) or (None, e)
        if isinstance(reason, pickle.UnpicklingError):
            reason = ("refused to load a file that is not plain tensors (torch.load with "
                      "weights_only=True rejected it; it may be malicious)")
        raise _unreadable(path, file, reason) from None
    return state


_STATE_INTS = ("step", "epoch", "batch_in_epoch", "items")


def _bad_state(state, path: Path) -> str | None:
    """Why train_state.json's content cannot be resumed from, or None."""
    if not isinstance(state, dict):
        return f"expected a JSON object, got {type(state).__name__}"
    for key in _STATE_INTS:
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key!r} must be an integer >= 0, got {value!r}"
    if not isinstance(state.get("train_s"), (int, float)) or not state["train_s"] >= 0:
        return f"'train_s' must be a number >= 0, got {state.get('train_s')!r}"
    m = _NAME.match(path.name)
    if m and int(m.group(1)) != state["step"]:
        return f"'step' is {state['step']} in the checkpoint of step {int(m.group(1))}"
    return None


def _load_rng(file: Path) -> None:
    """Load a random-state file as Accelerate does, raising where it would only log."""
    from accelerate.utils import load

    states = load(file)
    if not isinstance(states, dict) or "random_state" not in states:
        raise ValueError(f"expected a dict of random states, got {type(states).__name__}")


def _first_bad_file(path: Path) -> tuple[Path, Exception] | None:
    """The first weights or state file in checkpoint `path` that does not load, and why."""
    from accelerate.utils import load  # torch.load(weights_only=True) + numpy's RNG types

    for file in sorted(path.iterdir()):
        try:
            if file.suffix == ".safetensors":
                load_file(str(file))
            elif file.name.startswith("random_states_"):
                _load_rng(file)
            elif file.suffix in (".bin", ".pkl"):
                load(file)
        except Exception as e:
            return file, e
    return None


def _first_line(e) -> str:
    """The first line of an error's text (at most 200 characters), or its type's name."""
    return str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__


def _unreadable(path: Path, file: Path | None, reason) -> ValueError:
    reason = _first_line(reason)
    what = f"{file.name} is unreadable" if file is not None else "does not load"
    run_dir = path.parent.parent
    older = [p for _, p in list_checkpoints(run_dir) if p.name < path.name]  # names sort by step
    hint = (f"; an older checkpoint exists: {older[-1]} (move {path.name} out of "
            f"{path.parent} to resume from it)" if older else
            "; there is no older checkpoint: train into a new run_dir")
    return ValueError(f"checkpoint {str(path)!r}: {what} ({reason}){hint}")


def _contiguous(state_dict: dict) -> dict:
    # safetensors refuses shared or non-contiguous storage; clone() gives each its own.
    return {k: v.detach().contiguous().clone() for k, v in state_dict.items()}


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Weights only, as safetensors (tied weights are handled by safetensors' save_model),
    written atomically: an interrupted save leaves the previous file whole."""
    with atomic_path(path) as tmp:
        save_model(model, str(tmp))


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load safetensors weights; a .pt/.pth/.bin file only through torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        try:
            load_model(model, str(path), strict=strict)
        except Exception as e:  # SafetensorError (truncated, not safetensors), RuntimeError (keys)
            raise ValueError(f"weights file {str(path)!r} does not load into the "
                             f"{type(model).__name__} ({_first_line(e)})") from None
        return model
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"weights file {str(path)!r}: refused to unpickle anything but tensors "
                         f"(weights_only=True): {e}") from None
    if not isinstance(state, dict):
        raise ValueError(f"weights file {str(path)!r}: expected a state dict, got "
                         f"{type(state).__name__}")
    model.load_state_dict(state.get("state_dict", state), strict=strict)
    return model
