"""Engine tasks, one file per task; importing this package registers them all."""

from . import text  # noqa: F401  registers causal_lm, masked_lm, seq2seq, text_classification
from .base import Task, create_task, list_tasks, register_task
from .classification import ClassificationTask

__all__ = ["Task", "ClassificationTask", "create_task", "list_tasks", "register_task"]
