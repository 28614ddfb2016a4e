"""The training loop, on Hugging Face Accelerate: one CPU, one GPU, or many (DDP, or FSDP2 with
train.strategy fsdp: strategy.py) unchanged. N processes with batches of B / N train as one
with B: the tasks draw per item (data.py's item seeds) and average tokens over all processes
(tasks/base.py); dropout alone draws per process.

Determinism: model init is seeded; the data order and each item's augmentation are functions of
(seed, epoch, index) (see data.py); and every optimizer step reseeds the global RNGs from
(seed, step, process), so dropout and the like do not depend on how the run got to that step.
A run resumed from a checkpoint therefore reproduces an uninterrupted run on CPU exactly.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import signal
import time
import warnings
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..io import exclusive, write_json
from ..models.registry import create_model
from . import checkpoint as ckpt
from .config import RESUMABLE, Config, config_changes, load_config
from .data import build_datasets, make_loader
from .loggers import RunLogger, new_run_id, wandb_available, wandb_mode
from .optim import build_optimizer, build_scheduler
from .signals import (  # noqa: F401  STOP_SIGNALS, stop_now: their old import path
    STOP_SIGNALS,
    TrainingInterrupted,
    on_stop_signals,
    stop_now,
)
from .strategy import accelerator_kwargs, check_strategy, fsdp_env_restored
from .tasks import create_task


class NonFiniteLossError(RuntimeError):
    """The loss, the gradients or the weights became NaN or inf; the run stopped and its last
    good checkpoint is kept."""


def _seed_step(seed: int, step: int, rank: int) -> None:
    s = (seed * 1_000_003 + step) * 101 + rank
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _precision(requested: str, on_cpu: bool) -> str:
    if requested == "fp16" and on_cpu:
        warnings.warn("train.precision fp16 needs a GPU; using bf16 autocast on CPU", stacklevel=3)
        return "bf16"
    return requested


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, *, data=None, model=None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        t = cfg.train
        on_cpu = t.cpu or not torch.cuda.is_available()
        self.precision = _precision(t.precision, on_cpu)
        use_wandb = (cfg.logging.wandb and wandb_mode(cfg.logging.mode) != "disabled"
                     and wandb_available())
        # Accelerate keeps one global state per process; a second training in the same process
        # (tests, the experiment runner) may differ in precision, and Accelerator() then raises
        # "AcceleratorState has already been initialized and cannot be changed". accelerate
        # (1.16) has no public way to start afresh; its own tests use this private reset, which
        # keeps PartialState (the process group) and clears only the precision/plugin state.
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(
            mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[self.precision],
            cpu=on_cpu, log_with=["wandb"] if use_wandb else None, project_dir=str(self.run_dir),
            step_scheduler_with_optimizer=False,  # we step it once per optimizer step ourselves
            dynamo_backend="inductor" if t.compile else "no",
            **accelerator_kwargs(t.strategy),
        )
        self.main = self.accelerator.is_main_process
        set_seed(t.seed)  # same initial weights on every process

        self.task = create_task(cfg.task.name, **cfg.task.args)
        self.task.check_batch(cfg.data.batch_size, self.accelerator.num_processes)
        self.datasets = build_datasets(cfg.data, t.seed, data)
        self.task.setup(self.datasets["train"])  # class names, tokenizer, image shape
        if model is None:
            kwargs = {**self.task.model_kwargs(self.datasets["train"]), **cfg.model.args}
            model = create_model(cfg.model.name, **kwargs)
            self.model_spec = {"name": cfg.model.name, "args": kwargs}  # for load_run
        else:
            self.model_spec = None  # a model object: not rebuildable by name
        self.params = sum(p.numel() for p in model.parameters())
        check_strategy(t.strategy, self.accelerator, model, t.ema)
        # FSDP: an unsharded copy to gather the trained weights into at the end
        self._unsharded = copy.deepcopy(model) if t.strategy == "fsdp" else None
        if t.channels_last:
            model = model.to(memory_format=torch.channels_last)

        d = cfg.data
        eval_bs = d.eval_batch_size or 2 * d.batch_size
        collate = self.task.collate_fn(self.datasets["train"])
        train_loader, self.sampler = make_loader(self.datasets["train"], d.batch_size, seed=t.seed,
                                                 train=True, num_workers=d.num_workers,
                                                 collate_fn=collate)
        loaders = {s: make_loader(self.datasets[s], eval_bs, seed=t.seed, train=False,
                                  num_workers=d.num_workers, collate_fn=collate)[0]
                   for s in ("val", "test") if self.datasets[s] is not None}
        optimizer = build_optimizer(model, cfg.optim)

        self.model, self.optimizer, self.train_loader = self.accelerator.prepare(
            model, optimizer, train_loader)
        self.eval_loaders = {s: self.accelerator.prepare(dl) for s, dl in loaders.items()}
        if len(self.train_loader) == 0:
            raise ValueError(f"data.batch_size {d.batch_size} x {self.accelerator.num_processes} "
                             f"processes is larger than the training set "
                             f"({len(self.datasets['train'])} items)")
        accum = cfg.optim.grad_accum
        if t.max_steps is not None:
            self.total_steps = t.max_steps
        else:
            self.total_steps = max(1, math.ceil(t.epochs * len(self.train_loader) / accum))
        self.scheduler = self.accelerator.prepare(
            build_scheduler(self.optimizer.optimizer, cfg.optim, self.total_steps))
        self.ema = None
        if t.ema is not None:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(self.accelerator.unwrap_model(self.model), decay=t.ema)
        self.global_batch = d.batch_size * self.accelerator.num_processes * accum
        if self.main and cfg.logging.progress:  # what a launcher really started
            n = self.accelerator.num_processes
            print(f"world size {n} ({self.accelerator.distributed_type.value}, "
                  f"{self.accelerator.device.type}); global batch {self.global_batch} = "
                  f"data.batch_size {d.batch_size} x {n} process{'es' * (n > 1)} x "
                  f"optim.grad_accum {accum}", flush=True)
        self._interrupted = 0  # the stop signal received, if any

    # ---------------------------------------------------------------- state and resume
    def _resume(self) -> dict:
        mode = self.cfg.train.resume
        latest = ckpt.latest_checkpoint(self.run_dir)
        if mode is False and latest is not None:
            raise ValueError(f"run_dir {str(self.run_dir)!r} already holds checkpoints; pass "
                             f"resume=True (--resume) to continue it, or choose another run_dir")
        if mode is True and latest is None:
            raise FileNotFoundError(f"resume: no complete checkpoint under "
                                    f"{str(ckpt.checkpoints_dir(self.run_dir))!r}")
        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "train_s": 0.0, "items": 0,
                 "wandb_run_id": None, "resumed_from": None}
        if self.main:  # a temporary dir left by a crash during a save is never resumed from
            for stale in ckpt.checkpoints_dir(self.run_dir).glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        if latest is not None and mode in (True, "auto"):
            changes = self._changes_on_resume()
            state.update(ckpt.load_checkpoint(self.accelerator, latest, ema=self.ema))
            state["resumed_from"] = state["step"]
            state["config_changes"] = state.get("config_changes", []) + [
                {"step": state["step"], "key": k, "from": a, "to": b} for k, (a, b) in changes]
            if self.main:
                print(f"resuming from {latest} (step {state['step']})" + "".join(
                    f"; {k} changed from {a!r} to {b!r}" for k, (a, b) in changes))
        if self.cfg.logging.wandb and not state["wandb_run_id"]:
            state["wandb_run_id"] = new_run_id()
        return state

    def _changes_on_resume(self) -> list[tuple[str, tuple]]:
        """The settings changed since the run's config.yaml, all of them RESUMABLE; any other
        change is a ValueError naming each differing key."""
        saved = self.run_dir / "config.yaml"
        if not saved.is_file():
            return []
        changes = config_changes(load_config(saved), self.cfg)
        refused = {k: v for k, v in changes.items() if not k.startswith(RESUMABLE)}
        if refused:
            raise ValueError(
                f"resume: {', '.join(f'{k} {a!r} -> {b!r}' for k, (a, b) in refused.items())} "
                f"differ from the run's {saved}; resume with its values, or train into another "
                f"run_dir (a resume may change only "
                f"{', '.join(k + '*' if k.endswith('.') else k for k in RESUMABLE)})")
        return list(changes.items())

    def _save(self, state: dict) -> Path:
        # Never let a checkpoint hold non-finite weights: it would become "the last good one".
        # Each process checks what it holds (its shards under FSDP), and all hear of any.
        bad = not all(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all()
                      for p in self.model.parameters())
        if self.accelerator.reduce(torch.tensor(float(bad), device=self.accelerator.device),
                                   "sum") > 0:
            self._stop_nonfinite("weights", state["step"], self.log, None)
        state["metrics_lines"] = self.log.lines  # a resume from here drops the rows after it
        return ckpt.save_checkpoint(self.accelerator, self.run_dir, state["step"], state,
                                    ema=self.ema, keep_last=self.cfg.train.keep_last)

    def _stop_nonfinite(self, what: str, step: int, log: RunLogger, bar) -> None:
        last = ckpt.latest_checkpoint(self.run_dir)
        log.log({"event/nonfinite_loss": 1.0}, step=step)
        if bar is not None:
            bar.close()
        raise NonFiniteLossError(
            f"not finite at step {step} ({what}); stopping. The last good checkpoint is "
            f"{str(last) if last else 'none (no checkpoint was saved yet)'}")

    # ---------------------------------------------------------------- data
    def _micro_batches(self, epoch: int, pos: int):
        """Yields (epoch, batches consumed in that epoch, batch), forever, from a position."""
        n = len(self.train_loader)
        while True:
            if pos >= n:
                epoch, pos = epoch + 1, 0
            # Accelerate's loader re-sets the sampler's epoch from its own pass counter on every
            # pass; setting it here keeps both equal to our epoch, also after a resume.
            self.train_loader.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            loader = (self.accelerator.skip_first_batches(self.train_loader, pos) if pos
                      else self.train_loader)
            for batch in loader:
                pos += 1
                yield epoch, pos, batch
            epoch, pos = epoch + 1, 0

    def _format(self, batch: dict) -> dict:
        """With train.channels_last, every 4-D float tensor (images, whatever the task calls
        them) in NHWC memory order, as the model's convolutions then expect."""
        if not self.cfg.train.channels_last:
            return batch
        return {k: v.contiguous(memory_format=torch.channels_last)
                if torch.is_tensor(v) and v.dim() == 4 and v.is_floating_point() else v
                for k, v in batch.items()}

    # ---------------------------------------------------------------- evaluation
    def eval_model(self):
        return self.ema.module if self.ema is not None else self.model

    @torch.no_grad()
    def evaluate(self, split: str, step: int) -> dict:
        loader = self.eval_loaders[split]
        # the model itself, not its DDP wrapper: tasks call its own methods (generate, encode_*)
        model = self.accelerator.unwrap_model(self.eval_model())
        model.eval()
        chunks, first = defaultdict(list), None
        bar = tqdm(loader, desc=f"eval {split}", leave=False,
                   disable=not (self.main and self.cfg.logging.progress))
        for batch in bar:
            with self.accelerator.autocast():
                out = self.task.eval_step(model, self._format(batch))
            if first is None:
                first = (batch, out)
            out = self.accelerator.gather_for_metrics(out)  # drops the padding of the last batch
            for k, v in out.items():
                chunks[k].append(v.detach().cpu())
        result = self.task.eval_finalize({k: torch.cat(v) for k, v in chunks.items()})
        with self.accelerator.autocast():
            result.update(self.task.eval_whole_model(
                model, split, step,
                self.run_dir if self.main else None, self.log))
        self.model.train()
        if first is not None and self.main:
            self._examples = (split, self.task.examples(*first))
        return result

    # ---------------------------------------------------------------- the loop
    def _on_stop_signal(self, signum, frame):
        if self._interrupted:  # a second signal: stop at once
            last = ckpt.latest_checkpoint(self.run_dir)
            raise TrainingInterrupted(f"stopped at once by a second signal; the last checkpoint "
                                      f"is {last or 'none'}", signum)
        self._interrupted = signum
        if self.main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step "
                  f"(Ctrl-C again to stop now)", flush=True)

    def fit(self) -> dict:
        # One writer per run directory: a second trainer would interleave metrics and replace
        # checkpoints and config.yaml under this one.
        with exclusive(self.run_dir):
            return self._fit_locked()

    def _fit_locked(self) -> dict:
        t0 = time.perf_counter()
        cfg, accel = self.cfg, self.accelerator
        state = self._resume()
        self.state = state  # the loop's progress, read by evaluation logs (training time)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            cfg.save(self.run_dir / "config.yaml")
        accel.wait_for_everyone()
        log = RunLogger(accel, self.run_dir, cfg, run_id=state["wandb_run_id"],
                        resume_step=state["step"], resume_lines=state.get("metrics_lines"))
        self.log = log
        try:
            with on_stop_signals(self._on_stop_signal):
                result = self._fit(state, log, t0)
        finally:
            log.finish()
        return result

    def _fit(self, state: dict, log: RunLogger, t0: float) -> dict:
        cfg, accel, t = self.cfg, self.accelerator, self.cfg.train
        accum, rank = cfg.optim.grad_accum, accel.process_index
        batches = self._micro_batches(state["epoch"], state["batch_in_epoch"])
        unit = self.task.unit
        bar = tqdm(total=self.total_steps, initial=state["step"], desc="train", dynamic_ncols=True,
                   disable=not (self.main and cfg.logging.progress))
        window = defaultdict(float)  # sums of train metrics since the last log line
        window_n, window_items, window_time = 0, 0, 0.0
        last_metrics = {}
        self.model.train()
        while state["step"] < self.total_steps:
            step = state["step"]  # steps done so far; this one is number step + 1
            _seed_step(t.seed, step, rank)
            tic = time.perf_counter()
            loss_sum = torch.zeros((), device=accel.device)
            metric_sums: dict[str, torch.Tensor] = {}
            items = 0
            for k in range(accum):
                epoch, pos, batch = next(batches)
                sync = accel.no_sync(self.model) if k < accum - 1 else nullcontext()
                with sync:
                    loss, metrics = self.task.step(self.model, self._format(batch))
                    accel.backward(loss / accum)
                loss_sum += loss.detach().float()
                for name, v in metrics.items():
                    metric_sums[name] = metric_sums.get(name, 0) + v.detach().float() / accum
                items += self.task.count(batch)
            # The gradient norm is checked with the loss: a finite loss can still give NaN or
            # inf gradients, and applying them would put non-finite weights in the next
            # checkpoint. (max_norm inf measures without clipping.)
            grad_norm = accel.clip_grad_norm_(self.model.parameters(),
                                              cfg.optim.clip_grad or float("inf"))
            bad = not (torch.isfinite(loss_sum) and torch.isfinite(grad_norm))
            # One small all-reduce tells every process about a NaN or a stop signal on any.
            flags = accel.reduce(torch.tensor([float(bad), float(bool(self._interrupted))],
                                              device=accel.device), "sum")
            if flags[0] > 0:
                self._stop_nonfinite(f"loss {loss_sum.item() / accum}, gradient norm "
                                     f"{float(grad_norm)}", step + 1, log, bar)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(accel.unwrap_model(self.model), step=step)
            state.update(step=step + 1, epoch=epoch, batch_in_epoch=pos)
            step += 1
            dt = time.perf_counter() - tic
            global_items = items * accel.num_processes
            window_items += global_items
            window_time += dt
            state["train_s"] += dt
            state["items"] += global_items
            for name, v in metric_sums.items():
                window[name] += v
            window["grad_norm"] += grad_norm.detach().float()
            window_n += 1
            bar.update(1)

            if step % max(1, t.log_every) == 0 or step == self.total_steps:
                names = sorted(window)
                vals = accel.reduce(torch.stack([torch.as_tensor(window[n], device=accel.device)
                                               for n in names]) / window_n, "mean")
                last_metrics = {f"train/{n}": float(v) for n, v in zip(names, vals)}
                last_metrics.update({"lr": lr, f"train/{unit}_per_s": window_items / window_time,
                                     "epoch": epoch + pos / len(self.train_loader)})
                log.log(last_metrics, step)
                bar.set_postfix(loss=f"{last_metrics.get('train/loss', float('nan')):.4f}",
                                **{f"{unit}/s": f"{window_items / window_time:.0f}"})
                window.clear()
                window_n, window_items, window_time = 0, 0, 0.0
            if t.eval_every and step % t.eval_every == 0 and step < self.total_steps:
                self._eval_and_log("val", step, log)
            if t.checkpoint_every and step % t.checkpoint_every == 0:
                self._save(state)
            if flags[1] > 0:
                path = self._save(state)
                bar.close()
                raise TrainingInterrupted(f"interrupted at step {step}; saved {path}",
                                          self._interrupted or signal.SIGINT)
        bar.close()
        self._save(state)
        return self._finish(state, log, last_metrics, t0)

    def _eval_and_log(self, split: str, step: int, log: RunLogger) -> dict:
        if split not in self.eval_loaders:
            return {}
        result = self.evaluate(split, step)
        scalars = {f"{split}/{k}": v for k, v in result.items() if isinstance(v, (int, float))}
        # Training seconds so far (no evaluation, resumes included): x of wall-time curves
        log.log({**scalars, "time/train_s": self.state["train_s"]}, step)
        if self.main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in scalars.items()
                              if isinstance(v, float))
            tqdm.write(f"step {step}: {shown}")
            if getattr(self, "_examples", None):
                log.log_examples(f"{split}/examples", self._examples[1], step)
        return result

    def _final_model(self):
        """The trained model as one module (the EMA one when kept). Under FSDP, its weights
        gathered (every process takes part) into an unsharded copy on the main process; the
        other processes get None."""
        if self._unsharded is None:
            return self.accelerator.unwrap_model(self.eval_model())
        state = self.accelerator.get_state_dict(self.model)
        if not self.main:
            return None
        self._unsharded.load_state_dict(state)
        return self._unsharded

    def _finish(self, state, log, last_metrics, t0):
        step, unit = state["step"], self.task.unit
        val = self._eval_and_log("val", step, log)
        test = self._eval_and_log("test", step, log)
        final_model = self._final_model()
        summary = {
            "model": self.cfg.model.name, "dataset": self.cfg.data.name, "task": self.task.name,
            "seed": self.cfg.train.seed, "fraction": self.cfg.data.fraction,
            "steps": step, "epochs": state["epoch"] + state["batch_in_epoch"] / len(
                self.train_loader),
            "precision": self.precision, "num_processes": self.accelerator.num_processes,
            "global_batch_size": self.global_batch, "params": self.params,
            # over every step of the run, resumed sessions included
            f"train_{unit}_per_s": state["items"] / state["train_s"] if state["train_s"] else None,
            "train_s": state["train_s"], "wall_s": time.perf_counter() - t0,
            "resumed_from": state["resumed_from"], "ema": self.ema is not None,
            "config_changes": state.get("config_changes", []),  # allowed changes on resume
            "run_dir": str(self.run_dir), "wandb_run_id": state["wandb_run_id"],
        }
        summary.update({k: v for k, v in last_metrics.items() if k.startswith("train/")})
        results = {split: res for split, res in (("val", val), ("test", test)) if res}
        for split, res in results.items():
            summary.update({f"{split}/{k}": v for k, v in res.items()
                            if isinstance(v, (int, float))})
        summary.update(self.task.summary(results))
        extra = {}
        if self.main:
            ckpt.save_weights(final_model, self.run_dir / "model.safetensors")
            if self.model_spec is not None:
                write_json(self.run_dir / "model.json", self.model_spec)
            write_json(self.run_dir / "summary.json", summary)
            extra = self.task.artefacts(final_model, self.datasets, results, self.run_dir, log,
                                        step)
            log.summary(summary)
        self.accelerator.wait_for_everyone()
        return {**summary, **extra, "model_module": final_model, "val_result": val,
                "test_result": test}


def default_run_dir(cfg: Config) -> Path:
    return Path("runs") / f"{cfg.model.name}-{cfg.data.name}-seed{cfg.train.seed}"


def train(config, run_dir=None, resume=None, *, overrides=None, data=None, model=None) -> dict:
    """Train one model; returns the final metrics (also written to run_dir/summary.json).

    config: a YAML path, a dict or a Config; overrides: ["optim.lr=3e-4", ...].
    resume: None (use config.train.resume), True, False or "auto".
    data: optional dataset object (training split) or {"train", "val", "test"} mapping used
    instead of building data.name; model: optional nn.Module used instead of model.name.
    The returned dict also holds "model_module" (the trained model, EMA weights when EMA is on),
    "val_result" and "test_result" (the task's whole-split evaluations) and, on the main
    process, what the task's `artefacts` returned (classification: "test_predictions").
    """
    cfg = load_config(config, overrides)
    if resume is not None:
        cfg.train.resume = resume
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    with torch_threads(cfg.train.threads), fsdp_env_restored():
        return Trainer(cfg, run_dir, data=data, model=model).fit()


@contextmanager
def torch_threads(threads: int | None):
    """torch's CPU thread count set to `threads` (None: left as is) for the block and restored
    after it, so a run's `train.threads` does not outlive the run in the caller's process."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(before)
