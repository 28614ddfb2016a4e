"""Image classification: image -> logits; cross-entropy; accuracy, predictions, confusion matrix,
and the attention rollout of attention models as artefacts."""

from __future__ import annotations

import warnings
from functools import partial

import torch
import torch.nn.functional as F

from ...data import collate
from ...data.protocols import ClassDataset, class_names
from ...io import write_json
from .base import Task, image_kwargs, register_task


@register_task("classification")
class ClassificationTask(Task):
    """batch {"image": (B, C, H, W), "label": (B,)}; model -> (B, classes)."""

    main_metric = "acc"
    higher_is_better = True

    def __init__(self, label_smoothing: float = 0.0, image_key: str = "image",
                 label_key: str = "label", rollout_images: int = 8):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                f"task.args.label_smoothing: expected in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.image_key, self.label_key = image_key, label_key
        self.rollout_images = int(rollout_images)
        self.class_names: list[str] | None = None

    def setup(self, dataset) -> None:
        self.class_names = class_names(dataset)

    def model_kwargs(self, dataset) -> dict:
        kwargs = image_kwargs(dataset)
        if isinstance(dataset, ClassDataset) and dataset.num_classes is not None:
            kwargs["num_classes"] = dataset.num_classes
        return kwargs

    def collate_fn(self, dataset):
        # only what the task reads: captions and attribute dicts would be batched and walked
        # through by the device transfer every step for nothing (~8% of a small model's step)
        return partial(collate, keys=(self.image_key, self.label_key))

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

    def summary(self, results: dict) -> dict:
        return {f"{split}_accuracy": res["acc"] for split, res in results.items()
                if "acc" in res}

    def examples(self, batch, outputs, max_items=16):
        images = batch[self.image_key][:max_items].detach().float().cpu()
        out = []
        for i, img in enumerate(images):
            lo, hi = img.min(), img.max()  # per-image rescale: inputs may be normalized
            img = (img - lo) / (hi - lo).clamp_min(1e-6)
            p, y = int(outputs["pred"][i]), int(outputs["label"][i])
            out.append((img, f"pred {self._name(p)} / true {self._name(y)}"))
        return out

    def _name(self, i: int) -> str:
        names = self.class_names
        return names[i] if names and i < len(names) else str(i)

    def artefacts(self, model, datasets, results, run_dir, log, step) -> dict:
        """test_predictions.json, a W&B predictions table and confusion matrix, and (for models
        that return attention maps) the attention rollout over a few test images."""
        test = results.get("test") or {}
        predictions = [{"index": i, "label": y, "pred": p} for i, (y, p) in
                       enumerate(zip(test.get("labels", []), test.get("predictions", [])))]
        if test:
            write_json(run_dir / "test_predictions.json",
                       {"predictions": predictions, "confusion": test.get("confusion")})
        if predictions:
            log.log_table("test/predictions", ["index", "label", "pred"],
                          [[r["index"], r["label"], r["pred"]] for r in predictions], step)
            log.log_confusion("test/confusion", test["labels"], test["predictions"],
                              self.class_names, step)
        ds = datasets.get("test") or datasets.get("val")
        if log.log_images and ds is not None and self.rollout_images:
            self._log_rollout(model, ds, run_dir, log, step)
        return {"test_predictions": predictions}

    def _log_rollout(self, model, ds, run_dir, log, step) -> None:
        from ...viz.rollout import plot_rollout, rollout_maps, supports_rollout

        if not supports_rollout(model):
            return
        try:
            idx = range(min(self.rollout_images, len(ds)))
            images = torch.stack([ds[i][self.image_key] for i in idx])
            device = next(model.parameters()).device
            model.eval()
            with torch.no_grad():
                maps = rollout_maps(model, images.to(device)).cpu()
            path = plot_rollout(images, maps, run_dir / "attention_rollout.png")
            log.log_examples("test/attention_rollout", [(None, str(path))], step)
        except Exception as e:  # a picture is never worth a failed run
            warnings.warn(f"attention rollout for W&B failed: {e}", stacklevel=2)
