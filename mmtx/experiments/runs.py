"""What every study kind shares: the Spec base of its experiment file, the training config of
one run (`run_config`), and the one cached training call (`train_runs`: each run trained by the
engine once, through the worker pool, then measured; a finished run is read back).

A kind lists its runs as `Run`s (a name, a config and a module-level `measure` function) and
writes its report from the results; the deep copies, progress lines, run directories, logs,
cache and the `jobs` check live here once.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..keys import check_keys
from . import cache
from .pool import Job, is_main_process, run_jobs


def merge(a: dict, b: dict | None) -> dict:
    """`b` over `a`, mappings merged key by key (a copy; neither is changed)."""
    out = copy.deepcopy(a)
    for k, v in (b or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else copy.deepcopy(v)
    return out


def run_config(base: dict, model: dict, **patch) -> dict:
    """The training config of one run: `base` with `model` ({name, args}; its args over the
    base's) and each `patch` section (e.g. train={"seed": 1}) merged in key by key."""
    cfg = merge(base, patch)
    section = cfg.setdefault("model", {})
    section["name"] = model["name"]
    section["args"] = {**(section.get("args") or {}), **(model.get("args") or {})}
    return cfg


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class Spec:
    """The fields every experiment file has; a kind's schema adds its own."""

    kind: str = ""
    name: str = ""
    description: str = ""
    base: dict = field(default_factory=dict)  # the training config every run starts from
    jobs: int = 1  # runs trained at once, each in its own process

    def check(self) -> None:
        """Checks of the file as a whole, before anything trains (kinds add theirs)."""
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"{self.name}: jobs must be a positive int (runs trained at "
                             f"once), got {self.jobs!r}")
        cores = _usable_cores()
        if self.jobs > cores and is_main_process():
            print(f"warning: {self.name}: jobs {self.jobs} is more than the {cores} CPU cores "
                  "this process may use; the runs will share them", file=sys.stderr, flush=True)

    def check_keys(self, given, valid, what: str = "key", of: str = "") -> None:
        """mmtx.keys.check_keys, its error naming this experiment."""
        try:
            check_keys(given, valid, what, of)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None

    def config(self, model: dict, run_id: str, **patch) -> dict:
        """`run_config` with the experiment's logging: W&B group and name, and no per-run
        progress bars when runs train side by side (the pool prints one line per run)."""
        logging = {"group": self.name, "name": f"{self.name}/{run_id}"}
        if self.jobs > 1:
            logging["progress"] = False
        return run_config(self.base, model, **merge(patch, {"logging": logging}))


@dataclass
class Run:
    """One training of a study. After training, `measure(res, run_dir, *args)` (a module-level
    function: workers receive it by pickling) turns the engine's result `res` into the run's
    JSON-able result."""

    key: str  # its name in progress lines
    run_id: str  # its directory under OUT/runs
    config: dict
    measure: Callable[..., dict]
    args: tuple = ()


def train_and_measure(run_dir: Path, cfg: dict, measure: Callable[..., dict], args: tuple) -> dict:
    """The cached training call: a finished run's stored result (`train_runs` checked that it was
    trained with `cfg`), else the run trained (resumed from its checkpoints if it was stopped),
    measured and stored. The result file is written last, so a run killed before it resumes."""
    from ..train import train
    from ..train.engine import torch_threads

    run_dir = Path(run_dir)
    done = cache.finished(run_dir)
    if done is not None:
        return done
    saved = run_dir / "config.yaml"
    if saved.exists() and (yaml.safe_load(saved.read_text()) or {}).get("model") != cfg["model"]:
        # resuming would load another architecture's checkpoint into this model
        raise ValueError(f"{run_dir} holds an unfinished run of another model config "
                         f"({saved}); delete that directory or pass another --out")
    # the measurements use the run's train.threads, as its training did
    with torch_threads((cfg.get("train") or {}).get("threads")):
        res = train(cfg, run_dir, resume="auto")
        result = measure(res, run_dir, *args)
    return cache.store(run_dir, result) if is_main_process() else result


def _check_finished_matches(run_dir: Path, cfg: dict) -> None:
    """A finished run is read back only if it was trained with `cfg` (its logging aside): after
    an edit of the experiment file its stored result would describe another run."""
    from ..train.config import config_changes, load_config

    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        trained = load_config(saved)
    except ValueError as e:  # e.g. written by a version with other settings
        raise ValueError(f"{run_dir} holds a finished run whose {saved.name} cannot be read "
                         f"({e}); delete that directory to train it again, or pass another "
                         f"--out") from None
    changes = {k: v for k, v in config_changes(trained, load_config(cfg)).items()
               if not k.startswith("logging.")}
    if changes:
        raise ValueError(f"{run_dir} holds a finished run trained with other settings ("
                         + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())
                         + "); delete that directory to train it again, or pass another --out")


def train_runs(spec: Spec, out: Path, runs: list[Run],
               describe: Callable[[dict], str] = lambda r: "done") -> list[dict]:
    """Every run trained (`spec.jobs` at a time) or read back; results in the order of `runs`.
    Each run's console output goes to OUT/runs/RUN_ID/train.log."""
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{spec.name}: runs repeat ({ids}); give repeated models distinct labels")
    jobs = []
    for r in runs:
        run_dir = Path(out) / "runs" / r.run_id
        done = cache.finished(run_dir) is not None
        if done:  # before anything trains
            _check_finished_matches(run_dir, r.config)
        jobs.append(Job(r.key, train_and_measure, (run_dir, r.config, r.measure, r.args),
                        log=run_dir / "train.log", done=done))
    return run_jobs(jobs, spec.jobs, describe=describe)
