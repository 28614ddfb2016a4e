"""The training engine: Accelerate loop, tasks, configs, checkpoints, loggers."""

from .checkpoint import latest_checkpoint, list_checkpoints, load_weights, save_weights
from .config import Config, apply_overrides, load_config
from .engine import NonFiniteLossError, Trainer, TrainingInterrupted, train
from .tasks import ClassificationTask, Task, create_task, list_tasks, register_task

__all__ = [
    "Config", "apply_overrides", "load_config",
    "NonFiniteLossError", "Trainer", "TrainingInterrupted", "train",
    "ClassificationTask", "Task", "create_task", "list_tasks", "register_task",
    "latest_checkpoint", "list_checkpoints", "load_weights", "save_weights",
]
