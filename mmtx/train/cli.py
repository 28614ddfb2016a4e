"""`mmtx train CONFIG [--set k=v ...] [--run-dir DIR] [--resume]` (also under accelerate launch)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from .checkpoint import latest_checkpoint
from .config import load_config
from .engine import NonFiniteLossError, train
from .signals import TrainingInterrupted


def train_command(config, overrides=None, run_dir=None, resume=False) -> dict:
    """Load CONFIG, apply --set overrides, train; print the final metrics as JSON.

    The default run directory is runs/<config file name>, so `--resume` finds it again.
    Exit codes: 0 done, 1 non-finite loss; SIGINT / SIGTERM stop it after saving a checkpoint
    with TrainingInterrupted (`mmtx` exits 130 / 143), its message saying how to continue.
    """
    cfg = load_config(config, overrides)
    if run_dir is None:
        stem = Path(config).stem if isinstance(config, (str, Path)) else cfg.model.name
        run_dir = Path("runs") / stem
    try:
        result = train(cfg, run_dir=run_dir, resume=True if resume else None)
    except NonFiniteLossError as e:
        print(f"mmtx train: stopped: {e}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted as e:
        words = ["mmtx", "train", str(config), *(w for o in overrides or () for w in ("--set", o)),
                 "--run-dir", str(run_dir)]
        if latest_checkpoint(run_dir) is not None:  # else there is nothing to resume yet
            words.append("--resume")
        raise TrainingInterrupted(f"{e}; continue with: {shlex.join(words)}", e.signum) from None
    if result.get("num_processes", 1) == 1 or _is_main():
        shown = {k: v for k, v in result.items()
                 if isinstance(v, (int, float, str)) or v is None}
        print(json.dumps(shown, indent=1))
    return result


def _is_main() -> bool:
    from accelerate.state import PartialState
    return PartialState().is_main_process
