"""Image generation: a diffusion / flow-matching objective on images, conditioned on a class, a
caption or nothing; evaluation by sampling.

Training: the objective's loss (flow matching's velocity MSE, or DDPM's noise MSE) on the batch
images, with classifier-free guidance's condition drop drawn here in the step (each row with
probability `cond_drop`) and passed to the model as `cond_drop_mask`, whose conditioner makes
those rows the null class / null caption; the model's own draw is switched off (`cond_drop=0` in
the model kwargs the task gives).

Evaluation (`eval_generated`, on the model the engine passes: the EMA one when kept):
- a grid of `grid` images from fixed noise and fixed conditions (the same seed every time, so
  grids are comparable across steps), saved as grid_step_XXXXXXXX.png and grid.png in the run
  directory and logged to W&B;
- `eval_samples` more samples, judged by mmtx.eval.judge (shapes data only): `fd_shapes`
  against real test images with its real-vs-real floor `fd_shapes_floor`, and `cond_acc_<attr>`
  for each attribute the condition names, with the judge's accuracy on real test images as
  `cond_acc_<attr>_ceiling`; `sample_s_per_image`, the sampling time per image. On the
  "twins" shapes task also `consistency` (mmtx.eval.consistency: the fraction of samples whose
  two objects match in shape and colour) and `consistency_ceiling`, the same on real scenes.

Conditions: cond "class" reads the batch's `label` (y); "caption" tokenises the batch's
`caption` (CaptionCollate; by default with the fixed shapes vocabulary) into caption_ids /
caption_mask; "none" trains an unconditional model.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ...data import CaptionCollate, WordTokenizer, collate, load_tokenizer, shapes_vocabulary
from ...data.shapes import ShapesDataset
from ...diffusion import create_objective, create_sampler, sample
from .base import Task, register_task

CONDS = ("class", "caption", "none")
FLOW_SAMPLERS = ("euler", "heun")
DEFAULT_SAMPLER = {"flow": "euler", "ddpm": "ddim"}


def save_grid(images: torch.Tensor, path, cols: int | None = None, pad: int = 2,
              scale: int = 2) -> Path:
    """Images (N, C, H, W) in [-1, 1] -> one PNG grid (`cols` per row, default ~sqrt(N)),
    `pad` grey pixels between cells, each pixel drawn `scale` x `scale`."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    from PIL import Image

    n, c, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    pixels = to_uint8(images)  # (N, H, W, C)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 128, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        canvas[y:y + h, x:x + w] = pixels[i]
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas[..., 0] if c == 1 else canvas).save(path)
    return path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def plot_cond_acc(metrics_path, out, title: str | None = None) -> Path | None:
    """cond_acc per attribute (and its chance level) against training seconds, from a run's
    metrics.jsonl, as a PNG; None when the run logged no cond_acc."""
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line]
    split = "val" if any("val/cond_acc_colour" in r for r in rows) else "test"
    rows = [r for r in rows if f"{split}/cond_acc_colour" in r or f"{split}/cond_acc_shape" in r]
    if not rows:
        return None
    from ...viz.plots import plt, save_figure  # plots picks the file-only backend

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    minutes = [r.get("time/train_s", float("nan")) / 60 for r in rows]
    for attr, colour in (("shape", "#1f77b4"), ("colour", "#d62728"), ("size", "#2ca02c")):
        key = f"{split}/cond_acc_{attr}"
        if any(key in r for r in rows):
            ax.plot(minutes, [r.get(key, float("nan")) for r in rows], "o-", color=colour,
                    label=attr)
    for chance, attr, va in ((1 / 6, "shape", "bottom"), (1 / 8, "colour", "top")):
        ax.axhline(chance, color="#999999", lw=0.8, ls=":")  # the default 6 shapes, 8 colours
        ax.text(0.99, chance, f"chance, {attr}", fontsize=7, color="#777777", ha="right",
                va=va, transform=ax.get_yaxis_transform())
    ax.set_xlabel("training time (minutes, evaluation excluded)")
    ax.set_ylabel("cond_acc (judge reads what was asked)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out)


def _rows(cond, start: int, stop: int):
    if cond is None:
        return None
    return {k: v[start:stop] for k, v in cond.items()}


@torch.no_grad()
def generate(model: nn.Module, cond: dict | None, num: int, image_shape, *, objective,
             sampler: str = "euler", steps: int = 20, cfg_scale: float = 1.0, null_cond=None,
             seed: int = 0, batch_size: int = 256, progress: bool = False,
             autocast: bool = False, model_fn=None,
             sampler_args: dict | None = None) -> torch.Tensor:
    """`num` samples (num, *image_shape) float32 from `model`, called as model(x, t, **cond)
    (or through `model_fn(x, t, cond)` when given, e.g. to turn an x0 prediction into a
    velocity).

    cond: None or a dict of (num, ...) tensors (y, or caption_ids and caption_mask). All the
    starting noise is drawn first from a generator seeded with `seed` (which also drives the
    stochastic samplers), then sampled in batches of `batch_size`: the same seed gives the same
    images. cfg_scale != 1 needs null_cond (the model's "no condition", a dict like cond).
    sampler_args: the sampler's own options (e.g. {"shift": 3.0} for euler / heun).
    """
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    noise = torch.randn((num, *image_shape), generator=gen, device=device)

    if model_fn is None:
        def model_fn(x, t, c):
            return model(x, t, **(c or {}))

    if cond is not None:
        cond = {k: v.to(device) for k, v in cond.items()}
    out = []
    bar = range(0, num, batch_size)
    if progress and num > batch_size:
        from tqdm.auto import tqdm
        bar = tqdm(bar, desc="batches", leave=False)
    for start in bar:
        stop = min(start + batch_size, num)
        out.append(sample(model_fn, (stop - start, *image_shape), _rows(cond, start, stop),
                          objective=objective, sampler=sampler, cfg_scale=cfg_scale,
                          null_cond=null_cond, generator=gen, noise=noise[start:stop],
                          steps=steps, progress=progress, autocast=autocast,
                          **(sampler_args or {})))
    return torch.cat(out)


def _shapes_base(dataset):
    """The ShapesDataset behind `dataset` (itself or a subset's base), else None."""
    base = getattr(dataset, "base", dataset)
    return base if isinstance(base, ShapesDataset) else None


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
        eval_samples: samples judged per evaluation (fd_shapes, cond_acc; default 256).
        seed: of the grid's and the judged samples' noise (default 0).
        judge: True (shapes data: judge the samples), False, or a dict of judge training
            options (mmtx.eval.judge.load_judge: train_samples, epochs, ...).
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
                 image_key: str = "image", vae: str | None = None, sample_shift: float = 1.0):
        if prediction not in ("velocity", "x0"):
            raise ValueError(f"task.args.prediction: expected 'velocity' or 'x0', "
                             f"got {prediction!r}")
        if prediction == "x0" and objective != "flow":
            raise ValueError("task.args.prediction 'x0' applies to objective 'flow' (DDPM's "
                             "model predicts the noise)")
        if not 0.0 < x0_t_min < 1.0:
            raise ValueError(f"task.args.x0_t_min: expected in (0, 1), got {x0_t_min}")
        self.prediction, self.x0_t_min = prediction, float(x0_t_min)
        if cond not in CONDS:
            raise ValueError(f"task.args.cond: expected one of {', '.join(CONDS)}, got {cond!r}")
        if not 0.0 <= cond_drop < 1.0:
            raise ValueError(f"task.args.cond_drop: expected in [0, 1), got {cond_drop}")
        if objective not in DEFAULT_SAMPLER:
            raise ValueError(f"task.args.objective: expected one of "
                             f"{', '.join(DEFAULT_SAMPLER)}, got {objective!r}")
        obj_args = dict(objective_args or {})
        if timestep_sampling is not None:
            if objective != "flow":
                raise ValueError(f"task.args.timestep_sampling applies to objective 'flow', "
                                 f"got objective {objective!r}")
            obj_args["timestep_sampling"] = timestep_sampling
        elif objective == "flow":
            obj_args.setdefault("timestep_sampling", "logit_normal")
        self.objective = create_objective(objective, **obj_args)  # checks the options
        self.objective_name = objective
        self.sampler = sampler or DEFAULT_SAMPLER[objective]
        for name, value, low in (("sample_steps", sample_steps, 1), ("grid", grid, 1),
                                 ("eval_samples", eval_samples, 0),
                                 ("sample_batch_size", sample_batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"task.args.{name}: expected an int >= {low}, got {value!r}")
        if cfg_scale < 0:
            raise ValueError(f"task.args.cfg_scale: expected >= 0 (1 = no guidance), "
                             f"got {cfg_scale}")
        self.cond, self.cond_drop = cond, float(cond_drop)
        self.sample_steps, self.cfg_scale = sample_steps, float(cfg_scale)
        self.grid, self.grid_cols, self.eval_samples = grid, grid_cols, eval_samples
        self.seed, self.judge_opts = int(seed), judge
        self.sample_batch_size, self.image_key = sample_batch_size, image_key
        self.max_caption_len = int(max_caption_len)
        self.vocab = vocab
        self.tokenizer = None
        if cond == "caption":
            self.tokenizer = (WordTokenizer(shapes_vocabulary()) if vocab == "shapes"
                              else load_tokenizer(vocab))
        self.sample_shift = float(sample_shift)
        if self.sample_shift != 1.0 and self.sampler not in FLOW_SAMPLERS:
            raise ValueError(f"task.args.sample_shift applies to the samplers {FLOW_SAMPLERS}, "
                             f"got sampler {self.sampler!r}")
        # Validate the sampler against the objective now, not at the first evaluation.
        create_sampler(self.sampler, self.objective, steps=sample_steps,
                       **self.sampler_args(self.sampler))
        # Filled by model_kwargs from the training data:
        self.num_classes, self.class_names, self.image_shape = 0, None, None
        self.vae, self.latents = vae, None  # the autoencoder's folder; loaded by _use_vae
        self.shapes_data: ShapesDataset | None = None
        self._judge, self._reference, self._cache, self._eval_batches = None, None, None, 0
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

    def model_kwargs(self, dataset) -> dict:
        first = dataset[0][self.image_key]
        self.image_shape = tuple(first.shape)  # (C, H, W)
        self.shapes_data = _shapes_base(dataset)
        self._use_vae()
        c, h, _ = self.model_shape
        kwargs = {"in_chans": c, "img_size": h, "cond_drop": 0.0}  # the step drops conditions
        if self.cond == "class":
            num = getattr(dataset, "num_classes", None)
            if not num:
                raise ValueError(f"task.args.cond 'class' needs a dataset with num_classes, "
                                 f"got {type(dataset).__name__}")
            self.num_classes = int(num)
            names = getattr(dataset, "class_names", None)
            self.class_names = list(names) if names is not None else [
                str(i) for i in range(self.num_classes)]
            kwargs["num_classes"] = self.num_classes
        else:
            kwargs["num_classes"] = 0
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
            out = model(x, t, **(c or {}))
            # A DiT with learn_sigma (the published weights) also predicts the variance: its
            # second half of channels, which these objectives and samplers do not use.
            return out[:, :x.shape[1]] if out.shape[1] == 2 * x.shape[1] else out

        if self.prediction == "velocity":
            return predict

        def velocity(x, t, c):
            x0 = predict(x, t, c).float()
            t = t.float().clamp(min=self.x0_t_min).reshape(-1, *([1] * (x.dim() - 1)))
            return (x.float() - x0) / t  # (B, C, H, W)

        return velocity

    # ---------------------------------------------------------------- train and per-batch eval
    def step(self, model, batch):
        x0 = self._x0(batch)
        drop = None
        if self.cond != "none" and self.cond_drop > 0:
            drop = torch.rand(x0.shape[0], device=x0.device) < self.cond_drop  # (B,)
        loss, _ = self.objective.loss(self.model_fn(model), x0, self.batch_cond(batch, drop))
        return loss, {"loss": loss.detach()}

    def eval_step(self, model, batch):
        # Fixed times and noise per batch position, so evaluation losses compare across steps.
        x0 = self._x0(batch, sample=False)
        gen = torch.Generator(x0.device).manual_seed(self.seed * 7919 + self._eval_batches)
        self._eval_batches += 1
        _, per_sample = self.objective.loss(self.model_fn(model), x0, self.batch_cond(batch),
                                            generator=gen)
        return {"loss": per_sample}

    def eval_finalize(self, outputs):
        self._eval_batches = 0
        loss = outputs["loss"].float()
        return {"loss": float(loss.mean()) if loss.numel() else float("nan"),
                "count": int(loss.numel())}

    # ---------------------------------------------------------------- conditions
    def class_ids(self, names: list[str]) -> list[int]:
        """Class names -> ids; an unknown name is a ValueError listing the valid ones."""
        if self.cond != "class":
            raise ValueError(f"--class: this model is conditioned on {self.cond!r}, not on a "
                             f"class" + ("; use --prompt" if self.cond == "caption" else ""))
        ids = []
        for name in names:
            key = str(name).strip()
            if key not in self.class_names:
                raise ValueError(f"unknown class {name!r}; valid classes: "
                                 f"{', '.join(self.class_names)}")
            ids.append(self.class_names.index(key))
        return ids

    def encode_prompts(self, prompts: list[str]) -> dict:
        """Captions -> {"caption_ids", "caption_mask"} (N, max_caption_len); a word outside the
        vocabulary or a caption too long is a ValueError naming it."""
        if self.cond != "caption":
            raise ValueError(f"--prompt: this model is conditioned on {self.cond!r}, not on a "
                             f"caption" + ("; use --class" if self.cond == "class" else ""))
        tok = self.tokenizer
        for text in prompts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"prompt: expected a non-empty caption, got {text!r}")
            # A word-level vocabulary cannot spell an unknown word (byte/BPE tokenizers can).
            unknown = ([w for w in tok.tokenize(text) if w not in tok.stoi]
                       if isinstance(tok, WordTokenizer) else [])
            if unknown:
                vocab = [w for w in tok.itos if not w.startswith("<")]
                raise ValueError(f"prompt {text!r}: word(s) {unknown} not in the vocabulary; "
                                 f"valid words: {', '.join(vocab)}")
            n = len(tok.encode(text))
            if n > self.max_caption_len:
                raise ValueError(f"prompt {text!r} is {n} tokens with bos/eos, more than "
                                 f"max_caption_len {self.max_caption_len}")
        coll = CaptionCollate(tok, max_len=self.max_caption_len, pad_to_max_len=True)
        ids, mask = coll.encode(list(prompts))
        return {"caption_ids": ids, "caption_mask": mask}

    def conditions(self, num: int, classes=None, prompts=None) -> tuple[dict | None, list[str]]:
        """(model condition for `num` images, a label per image). Given classes / prompts are
        cycled over the images; by default classes cycle through all, and prompts are the
        captions of the first shapes test scenes."""
        if self.cond == "none":
            if classes or prompts:
                raise ValueError("this model is unconditional: it takes no --class or --prompt")
            return None, [""] * num
        if self.cond == "class":
            if prompts:
                self.encode_prompts(prompts)  # raises: not a caption model
            ids = self.class_ids(classes) if classes else list(range(self.num_classes))
            y = torch.tensor([ids[i % len(ids)] for i in range(num)])
            return {"y": y}, [self.class_names[int(i)] for i in y]
        if classes:
            self.class_ids(classes)  # raises: not a class model
        if not prompts:
            prompts = [item["caption"] for item in self.reference_items(num)]
        texts = [prompts[i % len(prompts)] for i in range(num)]
        return self.encode_prompts(texts), texts

    def reference_items(self, num: int) -> list[dict]:
        """The first `num` items of the test split of the training data's scenes (shapes)."""
        ref = self.reference(num)
        if ref is None:
            raise ValueError("default prompts come from the shapes data; pass --prompt")
        return [ref[i] for i in range(num)]

    def reference(self, num: int) -> ShapesDataset | None:
        """The test split of the training scenes, `num` items (shapes data only)."""
        ds = self.shapes_data
        if ds is None:
            return None
        if self._reference is None or len(self._reference) < num:
            self._reference = ShapesDataset(
                num, image_size=ds.image_size, split="test", seed=ds.seed, task=ds.task,
                num_objects=ds.num_objects, shapes=ds.shapes, colours=ds.colours,
                noise=ds.noise, clutter=ds.clutter, colour_jitter=ds.colour_jitter,
                background=ds.background)
        return self._reference

    def _targets(self, y: torch.Tensor | None, items: list[dict]) -> dict[str, list]:
        """What each judged image was asked to show: {attribute: [name per image]} and the
        image indices judged (one-object captions only)."""
        ds = self.shapes_data
        if self.cond == "class":
            nc = len(ds.colours)
            per_task = {
                "shape_colour": lambda k: {"shape": ds.shapes[k // nc],
                                           "colour": ds.colours[k % nc]},
                "shape": lambda k: {"shape": ds.shapes[k]},
                "colour": lambda k: {"colour": ds.colours[k]},
                "size": lambda k: {"size": ("small", "large")[k]},
            }
            if ds.task not in per_task:
                return {}
            return {i: per_task[ds.task](int(k)) for i, k in enumerate(y)}
        out = {}
        for i, item in enumerate(items):  # captions: one-object scenes name all three
            objs = item["attributes"]["objects"]
            if len(objs) == 1:
                out[i] = {a: objs[0][a] for a in ("shape", "colour", "size")}
        return out

    # ---------------------------------------------------------------- evaluation by sampling
    def judge(self):
        """The shapes judge for this task's data and judge options (trained once, then cached);
        None without shapes data or with judge: False."""
        return self._load_judge()

    def _load_judge(self):
        if self._judge is None and self.judge_opts and self.shapes_data is not None:
            from ...eval.judge import load_judge

            opts = self.judge_opts if isinstance(self.judge_opts, dict) else {}
            self._judge = load_judge(self.shapes_data, **opts)
        return self._judge

    def sample_images(self, model, cond, num: int, seed: int, progress: bool = False,
                      autocast: bool = False, cfg_scale: float | None = None,
                      steps: int | None = None, sampler: str | None = None) -> torch.Tensor:
        cfg = self.cfg_scale if cfg_scale is None else cfg_scale
        if cond is None:
            cfg = 1.0  # nothing to guide towards
        out = generate(model, cond, num, self.model_shape, objective=self.objective,
                       sampler=sampler or self.sampler, steps=steps or self.sample_steps,
                       cfg_scale=cfg, null_cond=self.null_cond, seed=seed,
                       batch_size=self.sample_batch_size, progress=progress,
                       autocast=autocast, model_fn=self.model_fn(model),
                       sampler_args=self.sampler_args(sampler or self.sampler))
        return out if self.latents is None else self.latents.decode(out)  # (num, C, H, W)

    @property
    def background(self) -> tuple:
        """The shapes scenes' background colour in the model's [-1, 1] pixel range."""
        return tuple(2 * b - 1 for b in self.shapes_data.background)

    def sampler_args(self, sampler: str) -> dict:
        """The options the run gives `sampler`: the time shift, for the flow samplers."""
        return {"shift": self.sample_shift} if sampler in FLOW_SAMPLERS else {}

    @torch.no_grad()
    def eval_generated(self, model, split, step, run_dir, log):
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
                result, grid = self._judged(model, autocast)
                self._cache = (key, result)
        finally:
            model.train(was_training)
        if run_dir is not None and grid is not None:
            self._write_grid(grid, run_dir, step, split, log)
        return dict(result)

    def _judged(self, model, autocast: bool):
        cond, _ = self.conditions(self.grid)
        grid = self.sample_images(model, cond, self.grid, self.seed, autocast=autocast)
        return self.judge_samples(model, self.eval_samples, self.seed + 1, autocast), grid

    @torch.no_grad()
    def judge_samples(self, model, n: int, seed: int, autocast: bool = False,
                      cfg_scale: float | None = None) -> dict:
        """The evaluation's measures on `n` fresh samples from noise seed `seed` (classes
        evenly, or the first test captions), at `cfg_scale` (default the task's): fd_shapes and
        its floor, cond_acc per attribute and its ceiling, sample_s_per_image, and on twins
        scenes consistency. Only sample_s_per_image without a judge or shapes data."""
        result = {}
        if n == 0:
            return result
        ref = self.reference(2 * n)
        items = [ref[i] for i in range(n)] if ref is not None else []
        if self.cond == "caption":
            if ref is None:
                return result
            cond = self.encode_prompts([it["caption"] for it in items])
        elif self.cond == "class":
            cond = {"y": torch.arange(n) % self.num_classes}  # every class, evenly
        else:
            cond = None
        tic = time.perf_counter()
        fake = self.sample_images(model, cond, n, seed, autocast=autocast, cfg_scale=cfg_scale)
        result["sample_s_per_image"] = (time.perf_counter() - tic) / n
        judge = self._load_judge()
        if judge is None or ref is None:
            return result
        from ...eval.generation import frechet_report

        real = torch.stack([ref[i][self.image_key] for i in range(len(ref))])
        with torch.autocast(fake.device.type, enabled=False):
            fd = frechet_report(real, fake.cpu(), judge.feature_extractor(),
                                generator=torch.Generator().manual_seed(self.seed))
        result.update(fd)
        if self.shapes_data.task == "twins":  # do the two far-apart objects match?
            from ...eval.consistency import consistency

            bg = self.background
            result["consistency"] = consistency(judge, fake.cpu(), bg)["consistency"]
            result["consistency_ceiling"] = consistency(judge, real[:n], bg)["consistency"]
        targets = self._targets(cond["y"] if self.cond == "class" else None, items)
        if targets:
            idx = sorted(targets)
            asked = judge.targets([targets[i] for i in idx])
            acc = judge.accuracy(fake[idx].cpu(), asked)
            for attr, value in acc.items():
                result[f"cond_acc_{attr}"] = value
                if attr in judge.ceiling:
                    result[f"cond_acc_{attr}_ceiling"] = judge.ceiling[attr]
            result["cond_acc_images"] = len(idx)
        return result

    # ---------------------------------------------------------------- the run, read back
    def spec(self) -> dict:
        """What `restore` needs to sample without the training data (generation.json)."""
        ds = self.shapes_data
        shapes = None if ds is None else {
            "image_size": ds.image_size, "seed": ds.seed, "task": ds.task,
            "num_objects": list(ds.num_objects), "shapes": list(ds.shapes),
            "colours": list(ds.colours), "noise": ds.noise, "clutter": ds.clutter,
            "colour_jitter": ds.colour_jitter, "background": list(ds.background)}
        return {"image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "class_names": self.class_names, "shapes": shapes,
                "vae": None if self.vae is None else str(Path(self.vae).expanduser().resolve())}

    def restore(self, spec: dict, vae=None) -> None:
        """The state model_kwargs read from the training data, from `spec()`'s dict; `vae`
        replaces the autoencoder folder the run trained with (moved, or another copy), else
        the spec's, else the task's own."""
        self.image_shape = tuple(spec["image_shape"])
        self.vae, self.latents = vae or spec.get("vae") or self.vae, None
        self._use_vae()
        self.num_classes, self.class_names = spec["num_classes"], spec["class_names"]
        shapes = spec.get("shapes")
        self.shapes_data = None if shapes is None else ShapesDataset(1, **shapes)

    def artefacts(self, model, datasets, results, run_dir, log, step) -> dict:
        """generation.json (class names, image shape, the scenes' options) and the caption
        tokenizer, so `mmtx sample` needs nothing but the run directory; cond_acc.png, the
        judged accuracy against training time."""
        metrics = Path(run_dir) / "metrics.jsonl"
        if metrics.is_file():
            try:
                plot_cond_acc(metrics, Path(run_dir) / "cond_acc.png")
            except Exception as e:  # a picture is never worth a failed run
                import warnings
                warnings.warn(f"cond_acc plot failed: {e}", stacklevel=2)
        if self.image_shape is not None:
            (Path(run_dir) / "generation.json").write_text(json.dumps(self.spec(), indent=1))
        if self.tokenizer is not None:
            self.tokenizer.save(Path(run_dir) / "tokenizer.json")
        return {}

    def _write_grid(self, grid, run_dir, step, split, log) -> None:
        run_dir = Path(run_dir)
        path = save_grid(grid, run_dir / f"grid_step_{step:08d}.png", cols=self.grid_cols)
        (run_dir / "grid.png").write_bytes(path.read_bytes())
        log.log_examples(f"{split}/samples", [(None, str(path))], step)
