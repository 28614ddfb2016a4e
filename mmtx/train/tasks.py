"""Tasks: what a model is trained to do, separated from how the engine trains it.

A task turns a batch (a dict) into a loss and metrics, and evaluation outputs into summary
metrics. The engine never looks inside a batch; so the same loop serves

- classification (here): image -> logits; loss = cross-entropy; accuracy, confusion matrix.
- causal LM: `step` shifts `tokens`, `eval_step` returns per-sample summed NLL and token counts,
  `eval_finalize` divides them into loss and perplexity; `count` returns tokens.
- masked LM: as causal LM, counting only masked positions.
- seq2seq / captioning: `model_kwargs` gives vocab size (and image size for captioning),
  `step` feeds `context` + shifted targets; `eval_finalize` may add BLEU-like scores.
- contrastive: `eval_step` returns per-sample image and text embeddings; `eval_finalize` builds
  the similarity matrix over the whole gathered split and reports retrieval recall@k.
- diffusion / patch-token generation: `step` samples noise or masks; `examples` renders samples.

Evaluation is per-sample: `eval_step` returns tensors whose first dim is the batch, the engine
gathers them across processes (dropping the padding DDP adds) and concatenates them over the
split, then `eval_finalize` sees the whole split at once. Metrics that are not means of
per-batch values (recall@k, confusion matrices, perplexity) come out right this way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def list_tasks() -> list[str]:
    return sorted(_TASKS)


def create_task(name: str, **args) -> Task:
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(list_tasks())}")
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

    def model_kwargs(self, dataset) -> dict:
        """Keyword arguments the model factory needs from the data (e.g. num_classes)."""
        return {}

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

    def examples(self, batch: dict, outputs: dict[str, torch.Tensor], max_items: int = 16
                 ) -> list[tuple[torch.Tensor, str]]:
        """(image (C,H,W), caption) pairs to show in dashboards; none by default."""
        return []


@register_task("classification")
class ClassificationTask(Task):
    """Image classification: batch {"image": (B,C,H,W), "label": (B,)}, model -> (B, classes)."""

    main_metric = "acc"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, image_key: str = "image",
                 label_key: str = "label"):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"task.args.label_smoothing: expected in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.image_key, self.label_key = image_key, label_key
        self.class_names: list[str] | None = None

    def model_kwargs(self, dataset) -> dict:
        kwargs = {}
        for attr, arg in (("num_classes", "num_classes"), ("in_chans", "in_chans"),
                          ("image_size", "img_size")):
            value = getattr(dataset, attr, None)
            if value is not None:
                kwargs[arg] = value
        names = getattr(dataset, "class_names", None)
        self.class_names = list(names) if names is not None else None
        return kwargs

    def _logits(self, model, batch):
        logits = model(batch[self.image_key])
        if logits.ndim != 2:
            raise ValueError(f"classification expects model output (batch, classes), got "
                             f"shape {tuple(logits.shape)}")
        return logits.float()  # loss and softmax in fp32 even under bf16/fp16 autocast

    def step(self, model, batch):
        logits = self._logits(model, batch)
        labels = batch[self.label_key]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        acc = (logits.argmax(-1) == labels).float().mean()
        return loss, {"loss": loss.detach(), "acc": acc}

    def eval_step(self, model, batch):
        logits = self._logits(model, batch)
        labels = batch[self.label_key]
        loss = F.cross_entropy(logits, labels, reduction="none")  # (B,)
        return {"loss": loss, "pred": logits.argmax(-1), "label": labels}

    def eval_finalize(self, outputs):
        pred, label = outputs["pred"].long().cpu(), outputs["label"].long().cpu()
        n = int(label.numel())
        num_classes = int(max(pred.max(), label.max()).item()) + 1 if n else 0
        if self.class_names:
            num_classes = max(num_classes, len(self.class_names))
        confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)  # rows: true class
        confusion.index_put_((label, pred), torch.ones_like(label), accumulate=True)
        return {
            "loss": float(outputs["loss"].float().mean()) if n else float("nan"),
            "acc": float((pred == label).float().mean()) if n else float("nan"),
            "count": n,
            "predictions": pred.tolist(),
            "labels": label.tolist(),
            "confusion": confusion.tolist(),
        }

    def examples(self, batch, outputs, max_items=16):
        images = batch[self.image_key][:max_items].detach().float().cpu()
        names = self.class_names
        out = []
        for i, img in enumerate(images):
            lo, hi = img.min(), img.max()  # per-image rescale: inputs may be normalized
            img = (img - lo) / (hi - lo).clamp_min(1e-6)
            p, y = int(outputs["pred"][i]), int(outputs["label"][i])
            p_name = names[p] if names and p < len(names) else str(p)
            y_name = names[y] if names and y < len(names) else str(y)
            out.append((img, f"pred {p_name} / true {y_name}"))
        return out
