"""Engine tasks, one file per task; importing this package registers them all."""

from . import captioning, contrastive, generation, text  # noqa: F401  each registers its tasks
from .base import Task, create_task, list_tasks, register_task
from .classification import ClassificationTask

__all__ = ["Task", "ClassificationTask", "create_task", "list_tasks", "register_task"]
