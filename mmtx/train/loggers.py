"""Where metrics go: run_dir/metrics.jsonl (always, main process), the console, and W&B through
Accelerate's tracker API (main process only; one run per training, offline unless a key is
configured). A broken or missing wandb costs one warning, never the training."""

from __future__ import annotations

import json
import math
import os
import secrets
import warnings
from pathlib import Path

from ..io import write_error, write_text


def wandb_mode(mode: str) -> str:
    """auto: $WANDB_MODE if set, else online when $WANDB_API_KEY is set, else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        warnings.warn(f"wandb is not usable ({e}); training goes on without W&B", stacklevel=2)
        return False
    return True


def new_run_id() -> str:
    return secrets.token_hex(4)  # wandb's ids are 8 lowercase alphanumerics too


def _scalar(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


class RunLogger:
    """Logs from every process may call; only the main process writes."""

    def __init__(self, accelerator, run_dir: Path, cfg, *, run_id: str | None, resume_step: int,
                 resume_lines: int | None = None):
        self.accelerator, self.run_dir, self.cfg = accelerator, Path(run_dir), cfg
        self.main = accelerator.is_main_process
        self.path = self.run_dir / "metrics.jsonl"
        self.wandb_on = False
        self.run_id = run_id
        self.lines = 0  # rows in metrics.jsonl (a checkpoint records it: see _truncate)
        if not self.main:
            return
        self._truncate(resume_step, resume_lines)
        if cfg.logging.wandb and wandb_mode(cfg.logging.mode) != "disabled" and run_id:
            self._init_wandb()

    def _truncate(self, resume_step: int, resume_lines: int | None) -> None:
        # Lines written after the checkpoint we resume from would be logged again: drop them.
        # The checkpoint records how many there were (the final evaluation logs rows at the
        # last checkpoint's own step, after it); without that count, rows up to its step stay.
        if not self.path.exists():
            return
        keep = []
        for n, line in enumerate(self.path.read_text().splitlines()):
            if resume_lines is not None and n >= resume_lines:
                break
            try:
                if resume_lines is not None or json.loads(line).get("step", 0) <= resume_step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
        write_text(self.path, "".join(k + "\n" for k in keep))
        self.lines = len(keep)

    def _init_wandb(self) -> None:
        lc = self.cfg.logging
        init = {"id": self.run_id, "resume": "allow", "dir": str(self.run_dir),
                "mode": wandb_mode(lc.mode), "group": lc.group, "name": lc.name,
                "tags": list(lc.tags) or None, "entity": lc.entity}
        try:
            self.accelerator.init_trackers(lc.project, config=self.cfg.to_dict(),
                                   init_kwargs={"wandb": {k: v for k, v in init.items()
                                                          if v is not None}})
            self.wandb_on = any(t.name == "wandb" for t in self.accelerator.trackers)
        except Exception as e:
            self._wandb_failed(e)

    def _wandb_failed(self, e: Exception) -> None:
        warnings.warn(f"W&B logging failed ({type(e).__name__}: {e}); training goes on with "
                      f"metrics.jsonl and the console only", stacklevel=3)
        self.wandb_on = False

    @property
    def log_images(self) -> bool:
        """Whether images are wanted in the dashboard (W&B on and logging.log_images)."""
        return self.main and self.wandb_on and self.cfg.logging.log_images

    @property
    def wandb_run(self):
        return self.accelerator.get_tracker("wandb", unwrap=True) if self.wandb_on else None

    def log(self, metrics: dict, step: int) -> None:
        if not self.main:
            return
        row = {"step": step}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is not None:
                row[k] = s if not (isinstance(s, float) and not math.isfinite(s)) else str(s)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:  # a full disk: name the file (a write error does not)
            raise write_error(self.path, e) from None
        self.lines += 1
        if self.wandb_on:
            try:
                self.accelerator.log({k: v for k, v in row.items() if k != "step"}, step=step)
            except Exception as e:
                self._wandb_failed(e)

    def log_examples(self, name: str, examples: list, step: int) -> None:
        """(image (C,H,W), caption) pairs, or (None, png_path), to W&B as images."""
        if not (self.main and self.wandb_on and examples and self.cfg.logging.log_images):
            return
        try:
            import wandb
            images = [wandb.Image(cap) if img is None  # a PNG file path
                      else wandb.Image(img.permute(1, 2, 0).numpy() if img.shape[0] in (1, 3)
                                       else img.numpy(), caption=cap)
                      for img, cap in examples]
            self.wandb_run.log({name: images}, step=step)
        except Exception as e:
            self._wandb_failed(e)

    def log_table(self, name: str, columns: list[str], rows: list[list], step: int) -> None:
        if not (self.main and self.wandb_on and rows):
            return
        try:
            self.accelerator.get_tracker("wandb").log_table(name, columns=columns, data=rows,
                                                            step=step)
        except Exception as e:
            self._wandb_failed(e)

    def log_confusion(self, name: str, labels: list[int], preds: list[int], class_names,
                      step: int) -> None:
        if not (self.main and self.wandb_on and labels):
            return
        try:
            import wandb
            plot = wandb.plot.confusion_matrix(y_true=labels, preds=preds,
                                               class_names=class_names)
            self.wandb_run.log({name: plot}, step=step)
        except Exception as e:
            self._wandb_failed(e)

    def summary(self, values: dict) -> None:
        if self.main and self.wandb_on:
            try:
                self.wandb_run.summary.update({k: v for k, v in values.items()
                                               if _scalar(v) is not None})
            except Exception as e:
                self._wandb_failed(e)

    def finish(self) -> None:
        if self.wandb_on:
            try:
                self.accelerator.end_training()
            except Exception as e:
                self._wandb_failed(e)
            self.wandb_on = False
