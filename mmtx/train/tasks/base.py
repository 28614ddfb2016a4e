"""Tasks: what a model is trained to do, separated from how the engine trains it.

The engine knows a model only as an `nn.Module` and a task. A task owns everything that depends
on what the batch holds and what the model is for:

- `collate_fn(dataset)`: how items become a batch dict (default `mmtx.data.collate`);
- `step`: batch -> (loss, {metric: scalar});
- `eval_step` / `eval_finalize`: per-sample outputs -> whole-split metrics;
- `eval_whole_model`: what needs the whole model on fixed inputs (samples, decoded text,
  zero-shot accuracy);
- `summary`: extra summary fields (e.g. `test_accuracy`);
- `examples` / `artefacts`: what a person looks at (images with captions for W&B, prediction
  files, confusion matrices, attention maps, sample grids).

Evaluation is per-sample: `eval_step` returns tensors whose first dim is the batch, the engine
gathers them across processes (dropping the padding DDP adds) and concatenates them over the
split, then `eval_finalize` sees the whole split at once. Metrics that are not means of
per-batch values (recall@k, confusion matrices, perplexity) come out right this way.

Several processes: a step's random draws come per item from the batch's item seeds
(`item_draws`), and a loss averaged over a varying number of tokens divides by the count over
every process (`mean_over_processes`); then N processes with batches of B / N train exactly as
one process with B (tests/test_dist_tasks.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from ...data import collate
from ...data.protocols import ImageDataset
from ...keys import check_kwargs
from ..data import ITEM_SEED
from ..draws import ItemDraws

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Class decorator: make a Task subclass available as `task.name: <name>` in configs."""

    def wrap(cls: type[Task]) -> type[Task]:
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is registered twice")
        _TASKS[name] = cls
        cls.name = name
        return cls

    return wrap


def image_kwargs(dataset) -> dict:
    """The model keywords an image dataset (`ImageDataset`) fixes: in_chans and img_size."""
    if not isinstance(dataset, ImageDataset):
        return {}
    return {arg: value for arg, value in (("in_chans", dataset.in_chans),
                                          ("img_size", dataset.image_size)) if value is not None}


def item_draws(batch: dict, device: torch.device) -> ItemDraws | None:
    """Per-item random draws on `device` from the batch's item seeds (the engine's loaders add
    them; see mmtx/train/draws.py); None for a batch without (a task called outside the engine),
    whose draws then come from the global RNG. An item's draws so depend only on the run's seed,
    its epoch and its index, not on which process or batch it lands in."""
    seeds = batch.get(ITEM_SEED)
    return None if seeds is None else ItemDraws(seeds.to(device))


def mean_over_processes(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """`total / count`, both summed over every process, as this process's share.

    A per-token loss over a batch whose rows hold different numbers of tokens (padding,
    random masks): DDP averages the processes' gradients, so the mean of per-process means
    would weigh each process's tokens by how few it had. Each process returns instead
    total * world / global count; their average (DDP's, and the engine's for the logged
    metric) is then the one-process mean over the whole global batch."""
    count = count.detach().float()
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world > 1:
        count = count.clone()
        dist.all_reduce(count)
    return total * world / count.clamp(min=1)


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def create_task(name: str, **args) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(list_tasks())}")
    check_kwargs(_TASKS[name], args, "task.args key", of=f"task {name!r}")
    try:
        return _TASKS[name](**args)
    except TypeError as e:
        raise ValueError(f"task {name!r}: bad task.args {args}: {e}") from None


class Task:
    """Interface. Subclasses override `step`, `eval_step`, `eval_finalize` (and maybe more)."""

    name = "task"
    unit = "images"  # what `count` counts; throughput is reported as <unit>_per_s
    main_metric = "loss"  # the validation metric a report ranks runs by
    higher_is_better = False

    def setup(self, dataset) -> None:
        """Read what the task keeps of the training data (class names, tokenizer, image shape).
        The engine calls it once, before `model_kwargs` and before training or evaluating."""

    def model_kwargs(self, dataset) -> dict:
        """Keyword arguments the model factory needs from the data (e.g. num_classes). Pure: it
        reads the dataset (and what `setup` read) and changes nothing."""
        return {}

    def check_batch(self, batch_size: int, num_processes: int) -> None:
        """Refuse (ValueError naming data.batch_size) a batch this task cannot learn from;
        called before the data is built. batch_size is per process."""

    def count(self, batch: dict) -> int:
        """Items in a batch, for throughput (images, or tokens for text tasks)."""
        first = next(v for v in batch.values() if torch.is_tensor(v))
        return int(first.shape[0])

    def step(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training forward: (scalar loss to backpropagate, {metric: scalar tensor})."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """Evaluation forward: per-sample tensors, first dim = batch (gathered across processes)."""
        raise NotImplementedError

    def eval_finalize(self, outputs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Whole-split metrics from the concatenated `eval_step` outputs.

        Scalars (float/int) are logged as metrics; anything else (lists, matrices) is kept in
        the run's summary but not logged as a scalar.
        """
        raise NotImplementedError

    def eval_whole_model(self, model: nn.Module, split: str, step: int, run_dir: Path | None,
                       log) -> dict[str, Any]:
        """After the per-batch evaluation, what needs the whole model rather than a batch:
        generated samples, decoded text, zero-shot classification. Runs on every process (the
        same fixed inputs give the same result); `run_dir` is None except on the main process,
        which writes files and logs through `log` (the run's RunLogger). Returns metrics merged
        into the split's result."""
        return {}

    def collate_fn(self, dataset) -> Callable[[list[dict]], dict]:
        """How a list of items becomes a batch dict; must be picklable for loader workers."""
        return collate

    def summary(self, results: dict[str, dict]) -> dict:
        """Extra fields for summary.json from {split: eval_finalize result}; none by default."""
        return {}

    def examples(self, batch: dict, outputs: dict[str, torch.Tensor], max_items: int = 16
                 ) -> list[tuple[torch.Tensor, str]]:
        """(image (C,H,W), caption) pairs to show in dashboards; none by default."""
        return []

    def artefacts(self, model: nn.Module, datasets: dict, results: dict[str, dict],
                  run_dir: Path, log, step: int) -> dict:
        """After training, on the main process: write files a person looks at into run_dir and
        log them (`log` is the run's RunLogger). Returns Python objects for `train()`'s result
        (not written to summary.json); none by default."""
        return {}
