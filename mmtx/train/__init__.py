"""The training engine: Accelerate loop, tasks, configs, checkpoints, loggers.

Its names are read on first use: `mmtx.train.signals` (what a pool worker imports before
anything else) must not import torch."""

from .signals import TrainingInterrupted

_CHECKPOINT = ("latest_checkpoint", "list_checkpoints", "load_weights", "save_weights")
_CONFIG = ("Config", "apply_overrides", "load_config")
_ENGINE = ("NonFiniteLossError", "Trainer", "train")
_TASKS = ("ClassificationTask", "Task", "create_task", "list_tasks", "register_task")

__all__ = [*_CONFIG, *_ENGINE, "TrainingInterrupted", *_TASKS, *_CHECKPOINT]


def __getattr__(name):
    if name in _CHECKPOINT:
        from . import checkpoint as module
    elif name in _CONFIG:
        from . import config as module
    elif name in _ENGINE:
        from . import engine as module
    elif name in _TASKS:
        from . import tasks as module
    else:
        raise AttributeError(f"module 'mmtx.train' has no attribute {name!r}")
    return getattr(module, name)
