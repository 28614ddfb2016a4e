"""Image generation: a diffusion / flow-matching objective on images, conditioned on a class, a
caption or nothing; evaluation by sampling.

Training: the objective's loss (flow matching's velocity MSE, or DDPM's noise MSE) on the batch
images, with classifier-free guidance's condition drop drawn here in the step (each row with
probability `cond_drop`) and passed to the model as `cond_drop_mask`, whose conditioner makes
those rows the null class / null caption; the model's own draw is switched off (`cond_drop=0` in
the model kwargs the task gives).

Evaluation (`eval_whole_model`, on the model the engine passes: the EMA one when kept):
- a grid of `grid` images from fixed noise and fixed conditions (the same seed every time, so
  grids are comparable across steps), saved as grid_step_XXXXXXXX.png and grid.png in the run
  directory and logged to W&B;
- `eval_samples` more samples, judged by mmtx.eval.judge (shapes data, or digits with
  normalize "symmetric"): `fd_shapes` (`fd_digits`) against real test images with its
  real-vs-real floor `fd_shapes_floor` (`fd_digits_floor`), and `cond_acc_<attr>` (digits:
  `cond_acc_class`) for each attribute the condition names, with the judge's accuracy on real
  test images as `cond_acc_<attr>_ceiling`; `sample_s_per_image`. On the "twins" shapes task
  also `consistency` (mmtx.eval.consistency: the fraction of samples whose two objects match
  in shape and colour) and `consistency_ceiling`, the same on real scenes.

Conditions: cond "class" reads the batch's `label` (y); "caption" tokenises the batch's
`caption` (CaptionCollate; by default with the fixed shapes vocabulary) into caption_ids /
caption_mask; "none" trains an unconditional model.

The task keeps the loss and the conditions; the rest lives where the next generator or command
finds it: guided sampling in mmtx.diffusion.sampling (`generate`), the judged-sample suite and
generation.json in mmtx.eval.samples, grids and the cond_acc plot in mmtx.viz, and the reading
of a person's class names and prompts in mmtx.sample.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from ...data import CaptionCollate, WordTokenizer, collate, load_tokenizer, shapes_vocabulary
from ...data.protocols import ClassDataset, class_names
from ...data.shapes import ShapesDataset
from ...diffusion.sampling import (
    check_cfg_scale,
    check_fits,
    create_objective,
    create_sampler,
    generate,
)
from ...eval.judge import judge_data_config
from ...eval.samples import (
    SampleSuite,
    check_spec_fits,
    digits_base,
    generation_spec,
    read_generation_spec,
    shapes_base,
)
from ...io import write_bytes, write_json
from ...models.protocols import prediction
from ...viz.grids import check_grid, save_grid, to_uint8
from ...viz.plots import plot_cond_acc
from .base import Task, item_draws, register_task

# Moved to mmtx.viz / mmtx.diffusion.sampling; still importable from here.
__all__ = ["GenerationTask", "save_grid", "to_uint8", "plot_cond_acc", "generate"]

CONDS = ("class", "caption", "none")
FLOW_SAMPLERS = ("euler", "heun")
DEFAULT_SAMPLER = {"flow": "euler", "ddpm": "ddim"}


def _number(name: str, value) -> float:
    """A finite real task argument as a float; anything else names task.args.<name>."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"task.args.{name}: expected a finite number, got {value!r}")
    return float(value)


@register_task("generation")
class GenerationTask(Task):
    """batch {"image": (B, C, H, W) in [-1, 1], "label" | "caption"}; model(x, t, y=None,
    caption_ids=None, caption_mask=None) -> prediction (B, C, H, W). See the module docstring.

    Args (task.args):
        objective: "flow" (rectified flow, default) or "ddpm".
        timestep_sampling: flow matching's "logit_normal" (default) or "uniform".
        objective_args: other options of the objective (flow: loc, scale; ddpm: num_steps,
            schedule).
        cond: "class" (default), "caption" or "none".
        cond_drop: probability of the null condition per training row (default 0.1).
        sampler: euler | heun (flow) or ddim | ddpm (ddpm); default euler / ddim.
        sample_steps: sampler steps (default 20); cfg_scale: guidance at evaluation (3.0).
        grid: images in the fixed grid (default 16); grid_cols: per row (default ~sqrt).
        grid_rows_by_class: class runs: one row per class (grid_cols images of each; grid
            must be num_classes * grid_cols); default False, the classes in turn.
        eval_samples: samples judged per evaluation (fd_shapes, cond_acc; default 256).
        seed: of the grid's and the judged samples' noise (default 0).
        judge: True (shapes or digits data: judge the samples), False, or a dict of judge
            training options (mmtx.eval.judge.load_judge: train_samples, epochs, ...).
        vocab: caption tokenizer: "shapes" (the fixed shapes vocabulary) or a tokenizer JSON.
        max_caption_len: tokens per caption, bos and eos included (default 24).
        sample_batch_size: samples per sampler call (default 256).
        sample_shift: the flow samplers' time shift (`mmtx.diffusion.samplers.flow_times`;
            default 1, evenly spaced steps; > 1 spends more steps near the noise).
        prediction: what the network outputs with the flow objective: "velocity" (default) or
            "x0", the clean image, turned into the velocity (x_t - x0) / t (JiT, Li & He 2025:
            pixel-space patch transformers learn clean images more easily than noise or
            velocity); the loss stays the velocity MSE. x0_t_min: t is clamped there (0.05).
        vae: a diffusers AutoencoderKL folder: the model trains and samples in its latent
            space (mmtx.diffusion.latent); grids and judged samples are the decoded images.
    """

    unit = "images"
    main_metric = "fd_shapes"
    higher_is_better = False

    def __init__(self, objective: str = "flow", timestep_sampling: str | None = None,
                 objective_args: dict | None = None, cond: str = "class",
                 cond_drop: float = 0.1, sampler: str | None = None, sample_steps: int = 20,
                 cfg_scale: float = 3.0, grid: int = 16, grid_cols: int | None = None,
                 eval_samples: int = 256, seed: int = 0, judge=True, vocab: str = "shapes",
                 max_caption_len: int = 24, sample_batch_size: int = 256,
                 prediction: str = "velocity", x0_t_min: float = 0.05,
                 image_key: str = "image", vae: str | None = None, sample_shift: float = 1.0,
                 grid_rows_by_class: bool = False):
        if objective not in DEFAULT_SAMPLER:
            raise ValueError(f"task.args.objective: expected one of "
                             f"{', '.join(DEFAULT_SAMPLER)}, got {objective!r}")
        if prediction not in ("velocity", "x0"):
            raise ValueError(f"task.args.prediction: expected 'velocity' or 'x0', "
                             f"got {prediction!r}")
        if prediction == "x0" and objective != "flow":
            raise ValueError("task.args.prediction 'x0' applies to objective 'flow' (DDPM's "
                             "model predicts the noise)")
        if not 0.0 < _number("x0_t_min", x0_t_min) < 1.0:
            raise ValueError(f"task.args.x0_t_min: expected in (0, 1), got {x0_t_min}")
        self.prediction, self.x0_t_min = prediction, float(x0_t_min)
        if cond not in CONDS:
            raise ValueError(f"task.args.cond: expected one of {', '.join(CONDS)}, got {cond!r}")
        if not 0.0 <= _number("cond_drop", cond_drop) < 1.0:
            raise ValueError(f"task.args.cond_drop: expected in [0, 1), got {cond_drop}")
        if objective_args is not None and not isinstance(objective_args, dict):
            raise ValueError(f"task.args.objective_args: expected a mapping of the objective's "
                             f"options, got {objective_args!r}")
        obj_args = dict(objective_args or {})
        if timestep_sampling is not None:
            if objective != "flow":
                raise ValueError(f"task.args.timestep_sampling applies to objective 'flow', "
                                 f"got objective {objective!r}")
            obj_args["timestep_sampling"] = timestep_sampling
        elif objective == "flow":
            obj_args.setdefault("timestep_sampling", "logit_normal")
        try:
            self.objective = create_objective(objective, **obj_args)  # checks the options
        except ValueError as e:
            raise ValueError(f"task.args.objective_args: {e}") from None
        self.objective_name = objective
        self.sampler = sampler or DEFAULT_SAMPLER[objective]
        for name, value, low in (("sample_steps", sample_steps, 1), ("grid", grid, 1),
                                 ("eval_samples", eval_samples, 0),
                                 ("sample_batch_size", sample_batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"task.args.{name}: expected an int >= {low}, got {value!r}")
        if grid_cols is not None and (isinstance(grid_cols, bool)
                                      or not isinstance(grid_cols, int) or grid_cols < 1):
            raise ValueError(f"task.args.grid_cols: expected an int >= 1 (images per row) or "
                             f"null, got {grid_cols!r}")
        self.cond, self.cond_drop = cond, float(cond_drop)
        self.sample_steps = sample_steps
        self.cfg_scale = check_cfg_scale(cfg_scale, "task.args.cfg_scale")
        self.grid, self.grid_cols, self.eval_samples = grid, grid_cols, eval_samples
        if not isinstance(grid_rows_by_class, bool):
            raise ValueError(f"task.args.grid_rows_by_class: expected true or false, "
                             f"got {grid_rows_by_class!r}")
        if grid_rows_by_class and (cond != "class" or grid_cols is None):
            raise ValueError("task.args.grid_rows_by_class needs cond 'class' and grid_cols "
                             f"(images per class), got cond {cond!r}, grid_cols {grid_cols!r}")
        self.grid_rows_by_class = grid_rows_by_class
        self.seed = int(seed)
        self.sample_batch_size, self.image_key = sample_batch_size, image_key
        self.max_caption_len = int(max_caption_len)
        self.vocab = vocab
        self.tokenizer = None
        if cond == "caption":
            self.tokenizer = (WordTokenizer(shapes_vocabulary()) if vocab == "shapes"
                              else load_tokenizer(vocab))
        self.sample_shift = _number("sample_shift", sample_shift)
        if self.sample_shift != 1.0 and self.sampler not in FLOW_SAMPLERS:
            raise ValueError(f"task.args.sample_shift applies to the samplers {FLOW_SAMPLERS}, "
                             f"got sampler {self.sampler!r}")
        # Validate the sampler against the objective now, not at the first evaluation.
        try:
            create_sampler(self.sampler, self.objective, steps=sample_steps,
                           **self.sampler_args(self.sampler))
        except ValueError as e:
            raise ValueError(f"task.args.sampler / sample_shift: {e}") from None
        # Filled by setup from the training data:
        self.num_classes, self.class_names, self.image_shape = 0, None, None
        self.vae, self.latents = vae, None  # the autoencoder's folder; loaded by _use_vae
        self.suite = SampleSuite(None, judge, image_key, self.seed)  # shapes: setup
        self._cache, self._eval_batches = None, 0
        if not judge:
            self.main_metric = "loss"

    # ---------------------------------------------------------------- data and model
    def _use_vae(self) -> None:
        if self.vae is not None and self.latents is None:
            from ...diffusion.latent import Latents, load_vae

            self.latents = Latents(load_vae(self.vae))
            self.latents.shape(self.image_shape)  # checks the size now, not at the first step

    @property
    def model_shape(self) -> tuple:
        """What the generator reads and writes: the image (C, H, W), or its latent."""
        return self.image_shape if self.latents is None else self.latents.shape(self.image_shape)

    def _x0(self, batch, sample: bool = True) -> torch.Tensor:
        x0 = batch[self.image_key]
        return x0 if self.latents is None else self.latents.encode(x0, sample=sample)

    def _num_classes(self, dataset) -> int:
        if self.cond != "class":
            return 0
        if not isinstance(dataset, ClassDataset) or not dataset.num_classes:
            raise ValueError(f"task.args.cond 'class' needs a dataset with num_classes, "
                             f"got {type(dataset).__name__}")
        return int(dataset.num_classes)

    def setup(self, dataset) -> None:
        self.image_shape = tuple(dataset[0][self.image_key].shape)  # (C, H, W)
        # The evaluation's samples and grid must fit: found now, not after the training.
        check_fits(self.eval_samples, self.image_shape, "task.args.eval_samples")
        check_fits(self.grid, self.image_shape, "task.args.grid")
        check_grid(self.grid, self.image_shape, self.grid_cols, what="task.args.grid")
        self.suite.shapes, self.suite.digits = shapes_base(dataset), digits_base(dataset)
        if self.suite.judge_opts and self.suite.digits is not None:
            judge_data_config(self.suite.digits)  # digits the judge cannot read: refused now
            self.main_metric = self.suite.fd_name
        self._use_vae()
        self.num_classes = self._num_classes(dataset)
        if self.cond == "class":
            self.class_names = class_names(dataset) or [str(i) for i in range(self.num_classes)]
        if self.grid_rows_by_class and self.grid != self.num_classes * self.grid_cols:
            raise ValueError(f"task.args.grid: with grid_rows_by_class, expected num_classes x "
                             f"grid_cols = {self.num_classes} x {self.grid_cols} = "
                             f"{self.num_classes * self.grid_cols}, got {self.grid}")

    def model_kwargs(self, dataset) -> dict:
        shape = tuple(dataset[0][self.image_key].shape)  # (C, H, W)
        if self.vae is not None and self.latents is None:
            raise ValueError("the generation task's model_kwargs with task.args.vae needs "
                             "setup(dataset) first (it loads the autoencoder)")
        c, h, _ = shape if self.latents is None else self.latents.shape(shape)
        kwargs = {"in_chans": c, "img_size": h, "cond_drop": 0.0,  # the step draws the drops
                  "num_classes": self._num_classes(dataset)}
        if self.cond == "caption":
            kwargs.update(vocab_size=self.tokenizer.vocab_size,
                          max_caption_len=self.max_caption_len, pad_id=self.tokenizer.pad_id)
        return kwargs

    def collate_fn(self, dataset):
        if self.cond == "caption":
            return CaptionCollate(self.tokenizer, max_len=self.max_caption_len)
        return collate

    @property
    def null_cond(self) -> dict | None:
        if self.cond == "class":
            return {"y": self.num_classes}
        if self.cond == "caption":
            return {"caption_ids": self.tokenizer.pad_id, "caption_mask": 0}
        return None

    def batch_cond(self, batch: dict, drop: torch.Tensor | None = None) -> dict | None:
        """The model's condition keywords for a batch; rows where `drop` is True are made
        unconditional by the model's conditioner (`cond_drop_mask`)."""
        if self.cond == "class":
            cond = {"y": batch["label"]}
        elif self.cond == "caption":
            cond = {"caption_ids": batch["caption_ids"],
                    "caption_mask": batch["caption_mask"].bool()}
        else:
            return None
        return cond if drop is None else {**cond, "cond_drop_mask": drop}

    def model_fn(self, model):
        """model(x, t, **cond) as the objective's model_fn(x, t, cond). With prediction "x0"
        the network's output is read as the clean image and turned into the velocity the flow
        objective and samplers use: v = (x_t - x0) / t, t clamped at x0_t_min."""
        def predict(x, t, c):
            # A DiT with learn_sigma (the published weights) also predicts the variance, which
            # these objectives and samplers do not use (the `Generator` contract).
            return prediction(model(x, t, **(c or {})), x)

        if self.prediction == "velocity":
            return predict

        def velocity(x, t, c):
            x0 = predict(x, t, c).float()
            t = t.float().clamp(min=self.x0_t_min).reshape(-1, *([1] * (x.dim() - 1)))
            return (x.float() - x0) / t  # (B, C, H, W)

        return velocity

    # ---------------------------------------------------------------- train and per-batch eval
    def _draws(self, batch, x0, cond_drop: float):
        """Per-item training times (B,), noise (like x0) and condition drops (B,) bool, from
        the batch's item seeds; None for a batch without them (then drawn from the global RNG
        and, in evaluation, a generator per batch)."""
        d = item_draws(batch, x0.device)
        if d is None:
            return None
        t = self.objective.t_from_uniform(d.uniform())
        return t, d.normal(*x0.shape[1:]).to(x0.dtype), d.uniform() < cond_drop

    def step(self, model, batch):
        x0 = self._x0(batch)
        dropping = self.cond != "none" and self.cond_drop > 0
        t, noise, drop = self._draws(batch, x0, self.cond_drop) or (None, None, None)
        if not dropping:
            drop = None
        elif drop is None:
            drop = torch.rand(x0.shape[0], device=x0.device) < self.cond_drop  # (B,)
        loss, _ = self.objective.loss(self.model_fn(model), x0, self.batch_cond(batch, drop),
                                      t=t, noise=noise)
        return loss, {"loss": loss.detach()}

    def eval_step(self, model, batch):
        # Fixed times and noise per item (evaluation's item seeds), so evaluation losses
        # compare across steps and do not depend on the batch or process an item lands in.
        x0 = self._x0(batch, sample=False)
        draws, gen = self._draws(batch, x0, 0.0), None
        if draws is None:
            gen = torch.Generator(x0.device).manual_seed(self.seed * 7919 + self._eval_batches)
            self._eval_batches += 1
        t, noise = draws[:2] if draws is not None else (None, None)
        _, per_sample = self.objective.loss(self.model_fn(model), x0, self.batch_cond(batch),
                                            generator=gen, t=t, noise=noise)
        return {"loss": per_sample}

    def eval_finalize(self, outputs):
        self._eval_batches = 0
        loss = outputs["loss"].float()
        return {"loss": float(loss.mean()) if loss.numel() else float("nan"),
                "count": int(loss.numel())}

    # ---------------------------------------------------------------- conditions
    def encode_captions(self, captions: list[str]) -> dict:
        """Captions -> {"caption_ids", "caption_mask"} (N, max_caption_len). Unchecked: a
        person's prompts are checked first by mmtx.sample.encode_prompts."""
        coll = CaptionCollate(self.tokenizer, max_len=self.max_caption_len, pad_to_max_len=True)
        ids, mask = coll.encode(list(captions))
        return {"caption_ids": ids, "caption_mask": mask}

    encode_prompts = encode_captions  # the former name; a person's prompts: mmtx.sample

    def conditions(self, num: int) -> tuple[dict | None, list[str]]:
        """(model condition for `num` images, a label per image): classes cycle through all;
        captions are those of the first shapes test scenes. Named classes and prompts:
        mmtx.sample.conditions."""
        if self.cond == "none":
            return None, [""] * num
        if self.cond == "class":
            y = torch.arange(num) % self.num_classes
            return {"y": y}, [self.class_names[int(i)] for i in y]
        texts = [item["caption"] for item in self.reference_items(num)]
        return self.encode_captions(texts), texts

    def reference_items(self, num: int) -> list[dict]:
        """The first `num` items of the test split of the training data's scenes (shapes)."""
        ref = self.reference(num)
        if ref is None:
            raise ValueError("default prompts come from the shapes data; pass --prompt")
        return [ref[i] for i in range(num)]

    # ---------------------------------------------------------------- evaluation by sampling
    @property
    def shapes_data(self) -> ShapesDataset | None:
        return self.suite.shapes

    def reference(self, num: int) -> ShapesDataset | None:
        """The test split of the training scenes, `num` items (shapes data only)."""
        return self.suite.reference(num)

    def judge(self):
        """The shapes judge (mmtx.eval.samples.SampleSuite.judge); None without one."""
        return self.suite.judge()

    @property
    def background(self) -> tuple:
        """The shapes scenes' background colour in the model's [-1, 1] pixel range."""
        return self.suite.background

    def sampler_args(self, sampler: str) -> dict:
        """The options the run gives `sampler`: the time shift, for the flow samplers."""
        return {"shift": self.sample_shift} if sampler in FLOW_SAMPLERS else {}

    def sample_images(self, model, cond, num: int, seed: int, progress: bool = False,
                      autocast: bool = False, cfg_scale: float | None = None,
                      steps: int | None = None, sampler: str | None = None) -> torch.Tensor:
        """`num` images (num, C, H, W) from noise seed `seed` (mmtx.diffusion.sampling.generate),
        decoded by the autoencoder of a latent run; defaults: the task's sampler, steps and
        guidance scale."""
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        if cond is None:
            scale = 1.0  # nothing to guide towards
        sampler = sampler or self.sampler
        return generate(model, cond, num, self.model_shape, objective=self.objective,
                        sampler=sampler, steps=steps or self.sample_steps, cfg_scale=scale,
                        null_cond=self.null_cond, seed=seed, batch_size=self.sample_batch_size,
                        progress=progress, autocast=autocast, model_fn=self.model_fn(model),
                        sampler_args=self.sampler_args(sampler),
                        decode=None if self.latents is None else self.latents.decode)

    @torch.no_grad()
    def eval_whole_model(self, model, split, step, run_dir, log):
        if self.image_shape is None:
            return {}
        device = next(model.parameters()).device
        autocast = torch.is_autocast_enabled(device.type)
        was_training = model.training
        model.eval()
        try:
            key = (step, float(sum(p.detach().float().sum() for p in model.parameters())))
            if self._cache is not None and self._cache[0] == key:
                result, grid = self._cache[1], None  # the same weights: the same samples
            else:
                cond, _ = self.conditions(self.grid)
                if self.grid_rows_by_class:  # row k: grid_cols images of class k
                    cond = {"y": torch.arange(self.grid) // self.grid_cols}
                grid = self.sample_images(model, cond, self.grid, self.seed, autocast=autocast)
                result = self.judge_samples(model, self.eval_samples, self.seed + 1, autocast)
                self._cache = (key, result)
        finally:
            model.train(was_training)
        if run_dir is not None and grid is not None:
            self._write_grid(grid, run_dir, step, split, log)
        return dict(result)

    @torch.no_grad()
    def judge_samples(self, model, n: int, seed: int, autocast: bool = False,
                      cfg_scale: float | None = None) -> dict:
        """The evaluation's measures on `n` fresh samples from noise seed `seed` at `cfg_scale`
        (default the task's): mmtx.eval.samples.SampleSuite.judge_samples."""
        def sample(cond, num):
            return self.sample_images(model, cond, num, seed, autocast=autocast,
                                      cfg_scale=cfg_scale)

        return self.suite.judge_samples(sample, n, self.cond, self.num_classes,
                                        self.encode_captions)

    # ---------------------------------------------------------------- the run, read back
    def spec(self) -> dict:
        """What `restore` needs to sample without the training data (generation.json)."""
        return generation_spec(self.image_shape, self.num_classes, self.class_names,
                               self.shapes_data, self.vae, digits=self.suite.digits)

    def restore(self, spec: dict, vae=None, where: str = "generation.json") -> None:
        """The state setup read from the training data, from `spec()`'s dict (checked:
        a missing or malformed key is a ValueError naming `where` and the key); `vae` replaces
        the autoencoder folder the run trained with (moved, or another copy), else the
        spec's, else the task's own."""
        spec = read_generation_spec(spec, where)
        self.image_shape = spec["image_shape"]
        self.vae, self.latents = vae or spec["vae"] or self.vae, None
        self._use_vae()
        self.num_classes, self.class_names = spec["num_classes"], spec["class_names"]
        if self.cond == "class" and self.class_names is None:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.suite.shapes, self.suite.digits = spec["shapes"], spec["digits"]
        if self.suite.judge_opts and self.suite.digits is not None:
            self.main_metric = self.suite.fd_name

    def check_model_args(self, args: dict, where: str = "generation.json") -> None:
        """Refuse a restored state that does not fit the model built with `args` (model.json)."""
        check_spec_fits(self.model_shape, self.image_shape, self.num_classes, args, where)

    def artefacts(self, model, datasets, results, run_dir, log, step) -> dict:
        """generation.json (class names, image shape, the scenes' options) and the caption
        tokenizer, so `mmtx sample` needs nothing but the run directory; cond_acc.png, the
        judged accuracy against training time."""
        metrics = Path(run_dir) / "metrics.jsonl"
        if metrics.is_file():
            try:
                plot_cond_acc(metrics, Path(run_dir) / "cond_acc.png")
            except Exception as e:  # a picture is never worth a failed run
                warnings.warn(f"cond_acc plot failed: {e}", stacklevel=2)
        if self.image_shape is not None:
            write_json(Path(run_dir) / "generation.json", self.spec())
        if self.tokenizer is not None:
            self.tokenizer.save(Path(run_dir) / "tokenizer.json")
        return {}

    def _write_grid(self, grid, run_dir, step, split, log) -> None:
        run_dir = Path(run_dir)
        path = save_grid(grid, run_dir / f"grid_step_{step:08d}.png", cols=self.grid_cols)
        write_bytes(run_dir / "grid.png", path.read_bytes())
        log.log_examples(f"{split}/samples", [(None, str(path))], step)
