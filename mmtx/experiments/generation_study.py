"""The generation study: a CNN, a patch-token transformer and a hybrid as image generators.

`mmtx run experiments/generation_study.yaml` lands here (`kind: generation_study`). Every model
(the attention-free U-Net, the DiT, the U-Net with attention at low resolution) trains with the
same optimiser, batch and steps (the `base` config), sized to the same forward FLOPs per image
(within `flop_tolerance`, checked before anything trains), on three measurements, each one
engine run through the `generation` task:

- class: shape x colour classes. fd_shapes against its real-vs-real floor, cond_acc per
  attribute against the judge's ceiling, sample time per image, fd_shapes against training
  step, and a classifier-free-guidance sweep (fd_shapes against cond_acc).
- consistency: "twins" scenes (two far-apart objects that always share shape and colour; the
  condition names neither). The rate of samples whose two objects match
  (mmtx.eval.consistency), the same on real scenes, and the CNN's theoretical receptive field.
- text: caption-conditioned one- and two-object scenes whose training data never holds the
  `holdout` colour-shape combinations (ShapesDataset exclude). Test prompts with and without
  them; per attribute, relation and whole-prompt accuracy (mmtx.eval.composition), and the same
  measure on the real images of those prompts.

Every number is read on held-out test scenes or fresh samples; nothing is tuned on them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..diffusion.guidance import check_cfg_scale
from .generation_report import pct, write_study_report
from .pool import is_main_process
from .registry import register_kind
from .report import Panel, read_curve
from .runs import Run, Spec, merge, train_runs

MEASUREMENTS = ("class", "consistency", "text")
ROLES = ("cnn", "dit", "hybrid")
# each measurement's compute curve: the runs' own judged evaluations (the class and the
# one-object caption prompts name a shape; the twins condition names neither)
CURVE_METRIC = {"class": "cond_acc_shape", "consistency": "consistency", "text": "cond_acc_shape"}


@dataclass
class GenStudyEval:
    samples: int = 240  # class: samples judged per guidance scale (classes evenly)
    cfg_scales: list[float] = field(default_factory=lambda: [1.0, 2.0, 3.0, 5.0])
    consistency_samples: int = 300
    prompts: int = 120  # text: test prompts with seen combinations, and as many unseen
    grid: int = 16  # images per sample grid
    seed: int = 1000  # noise of the study's samples (the runs' own evaluations use others)


@dataclass
class GenStudySpec(Spec):
    kind: str = "generation_study"
    models: list[dict] = field(default_factory=list)  # {label, role, name, args}
    # per measurement: {data: {...}, task: {...}, model_args: {...}} merged over `base`
    measurements: dict = field(default_factory=dict)
    holdout: list[str] = field(default_factory=lambda: ["red star", "blue triangle"])
    flop_tolerance: float = 0.2  # largest / smallest forward FLOPs per image, minus 1
    eval: GenStudyEval = field(default_factory=GenStudyEval)
    target: float = 0.90  # the DiT's cond_acc for shape and for colour
    # the DiT's whole-prompt accuracy on prompts with seen / held-out combinations
    text_target: dict = field(default_factory=lambda: {"seen": 0.5, "unseen": 0.25})
    # consistency compares models only when each draws the asked shape this often on the class
    # measurement: below it the judge reads blobs, and two blobs "match" by chance
    draw_threshold: float = 0.8

    def check(self) -> None:
        super().check()
        _check(self)


def _run_id(measurement: str, label: str) -> str:
    return f"{measurement}-{label}"


def run_config(spec: GenStudySpec, model: dict, measurement: str) -> dict:
    """The engine config of one model on one measurement."""
    meas = spec.measurements[measurement]
    patch = {k: v for k, v in meas.items() if k != "model_args"}
    if measurement == "text":  # the held-out combinations never reach the training scenes
        patch = merge(patch, {"data": {"args": {"exclude": list(spec.holdout)}}})
    args = {**(model.get("args") or {}), **(meas.get("model_args") or {})}
    return spec.config({"name": model["name"], "args": args},
                       _run_id(measurement, model["label"]), **patch)


# ------------------------------------------------------------------------------ FLOPs
def _example(task) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One image's forward arguments as the task calls the model: x, t and the condition
    keywords (a class, or the first test caption; none when unconditional)."""
    cond, _ = task.conditions(1)
    return torch.randn(1, *task.model_shape), torch.rand(1), cond or {}


def flops_per_image(model, task) -> int:
    """Forward FLOPs of one image (a multiply-add counts 2), condition and attention included:
    torch's counter alone counts the fused attention kernels as 0 on some devices, which
    would flatter every model with attention in a FLOP-matched comparison."""
    from ..models.summary import forward_flops

    x, t, cond = _example(task)
    with torch.no_grad():
        return int(forward_flops(model, x, t, **cond))


def _built(spec: GenStudySpec, model: dict, measurement: str):
    """(untrained model, its task with the data's state), as the engine would build them."""
    from ..data import build_dataset
    from ..models.registry import create_model
    from ..train.tasks import create_task

    cfg = run_config(spec, model, measurement)
    data = cfg.get("data", {})
    args = {k: v for k, v in (data.get("args") or {}).items() if k not in ("num_samples", "cache")}
    ds = build_dataset(data.get("name", "shapes"), "train", num_samples=2, **args)
    task = create_task("generation", **(cfg.get("task", {}).get("args") or {}))
    task.setup(ds)
    kwargs = {**task.model_kwargs(ds), **cfg["model"]["args"]}
    return create_model(model["name"], **kwargs), task


def check_flops(spec: GenStudySpec, measurement: str) -> dict[str, int]:
    """{label: forward FLOPs per image}; a ValueError when the largest exceeds the smallest by
    more than `flop_tolerance`."""
    flops = {m["label"]: flops_per_image(*_built(spec, m, measurement)) for m in spec.models}
    ratio = max(flops.values()) / max(1, min(flops.values()))
    if ratio > 1 + spec.flop_tolerance:
        raise ValueError(f"{spec.name}: models are not FLOP-matched on {measurement!r}: "
                         + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in flops.items())
                         + f" MFLOPs per image (largest / smallest {ratio:.2f}, allowed "
                         f"{1 + spec.flop_tolerance:.2f}); adjust the widths in models.args")
    return flops


def _check(spec: GenStudySpec) -> None:
    """The file's checks that build nothing (the FLOP match builds the models: `check_flops`)."""
    if not spec.flop_tolerance >= 0:  # nan too
        raise ValueError(f"{spec.name}: flop_tolerance must be >= 0 (the largest model's forward "
                         f"FLOPs over the smallest's, minus 1), got {spec.flop_tolerance!r}")
    if not spec.models:
        raise ValueError(f"{spec.name}: 'models' must list the cnn, dit and hybrid models")
    for m in spec.models:
        if not isinstance(m, dict) or not {"label", "role", "name"} <= set(m):
            raise ValueError(f"{spec.name}: each model needs label, role and name, got {m!r}")
        spec.check_keys(m, ("label", "role", "name", "args"), of=f"model {m['label']!r}")
        if m["role"] not in ROLES:
            raise ValueError(f"{spec.name}: model {m['label']!r}: role must be one of "
                             f"{', '.join(ROLES)}, got {m['role']!r}")
    labels = [m["label"] for m in spec.models]
    if len(set(labels)) != len(labels):
        raise ValueError(f"{spec.name}: model labels repeat: {labels}")
    # `--set measurements.text=null` leaves a measurement out (e.g. the class one alone)
    spec.measurements = {k: v for k, v in spec.measurements.items() if v is not None}
    for name, meas in spec.measurements.items():
        if not isinstance(meas, dict):
            raise ValueError(f"{spec.name}: measurements.{name}: expected a mapping of "
                             f"data / task / model_args (null leaves it out), got {meas!r}")
    unknown = sorted(set(spec.measurements) - set(MEASUREMENTS))
    if unknown or not spec.measurements:
        raise ValueError(f"{spec.name}: measurements must name some of "
                         f"{', '.join(MEASUREMENTS)}, got {sorted(spec.measurements)}")
    expect = {"class": "shape_colour", "consistency": "twins", "text": None}
    for name, meas in spec.measurements.items():
        task = (meas.get("data", {}).get("args") or {}).get("task") or \
            (spec.base.get("data", {}).get("args") or {}).get("task")
        if expect[name] and task != expect[name]:
            raise ValueError(f"{spec.name}: measurements.{name}: data.args.task must be "
                             f"{expect[name]!r}, got {task!r}")
        cond = (meas.get("task", {}).get("args") or {}).get("cond")
        if name == "text" and cond != "caption":
            raise ValueError(f"{spec.name}: measurements.text: task.args.cond must be "
                             f"'caption', got {cond!r}")
    spec.check_keys(spec.text_target, ("seen", "unseen"), of="text_target")
    for name, value in [("target", spec.target), ("draw_threshold", spec.draw_threshold),
                        *((f"text_target.{k}", v) for k, v in spec.text_target.items())]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not 0 <= value <= 1:  # nan too
            raise ValueError(f"{spec.name}: {name}: expected a fraction in [0, 1], got {value!r}")
    if spec.eval.samples < 4 or spec.eval.prompts < 1 or spec.eval.consistency_samples < 1:
        raise ValueError(f"{spec.name}: eval.samples >= 4, eval.prompts and "
                         f"eval.consistency_samples >= 1 expected, got {spec.eval}")
    if spec.eval.grid < 1:
        raise ValueError(f"{spec.name}: eval.grid: expected an int >= 1 (images per sample "
                         f"grid), got {spec.eval.grid}")
    for scale in spec.eval.cfg_scales:
        check_cfg_scale(scale, f"{spec.name}: eval.cfg_scales")
    from ..train.config import load_config

    for name in spec.measurements:  # every run's config, as `mmtx train` checks it
        try:
            load_config(run_config(spec, spec.models[0], name))
        except ValueError as e:
            raise ValueError(f"{spec.name}: measurements.{name}: {e}") from None


# ------------------------------------------------------------------------------ one run
def measure(res: dict, run_dir: Path, spec: GenStudySpec, model: dict, measurement: str,
            out: Path) -> dict:
    """One trained model on one measurement: the study's own samples, judged."""
    from ..train.run import load_generator

    net, task, _ = load_generator(run_dir)
    result = {"model": model["label"], "role": model["role"], "model_name": model["name"],
              "measurement": measurement, "params": res["params"],
              "flops": flops_per_image(net, task), "steps": res["steps"],
              "train_images_per_s": res.get("train_images_per_s"), "train_s": res["train_s"],
              "wall_s": res["wall_s"], "run_dir": str(run_dir)}
    grids = out / "grids"
    measure_of = {"class": _measure_class, "consistency": _measure_consistency,
                  "text": _measure_text}[measurement]
    result.update(measure_of(spec, model, net, task, run_dir, grids))
    return result


def _judge(task):
    judge = task.judge()
    if judge is None:
        raise ValueError("the generation study reads samples with the shapes judge: "
                         "task.args.judge must not be false")
    return judge


def _measure_class(spec, model, net, task, run_dir, grids) -> dict:
    """The guidance sweep (the task's own scale included) and the fd_shapes curve."""
    sweep = {}
    for scale in sorted({*map(float, spec.eval.cfg_scales), task.cfg_scale}):
        sweep[f"{scale:g}"] = task.judge_samples(net, spec.eval.samples, spec.eval.seed,
                                                 cfg_scale=scale)
    grids.mkdir(parents=True, exist_ok=True)
    if (run_dir / "grid.png").is_file():  # the run's last fixed grid (classes in order)
        shutil.copy(run_dir / "grid.png", grids / f"class_{model['label']}.png")
    split = "val" if read_curve(run_dir / "metrics.jsonl", "val/fd_shapes") else "test"
    return {"cfg_scale": task.cfg_scale, "sweep": sweep, "at_default": sweep[f"{task.cfg_scale:g}"],
            "fd_curve": read_curve(run_dir / "metrics.jsonl", f"{split}/fd_shapes")}


def _measure_consistency(spec, model, net, task, run_dir, grids) -> dict:
    from ..eval.consistency import consistency
    from ..models.receptive_field import receptive_field
    from ..train.tasks.generation import save_grid

    n = spec.eval.consistency_samples
    cond, _ = task.conditions(n)  # classes (sizes alike or not) evenly, or none
    fake = task.sample_images(net, cond, n, spec.eval.seed)
    judge = _judge(task)
    ref = task.reference(n)
    real = torch.stack([ref[i]["image"] for i in range(n)])
    save_grid(fake[: spec.eval.grid], grids / f"consistency_{model['label']}.png", cols=8)
    got = consistency(judge, fake, task.background)
    rf = None
    if model["role"] != "dit":  # the U-Nets' convolution path; the hybrid adds attention
        # the residual blocks' 1x1 "skip" convolutions bypass the path; they widen nothing
        rf = receptive_field(net, skip=("skip",), example=_example(task)[:2])
    return {"consistency": got["consistency"], "two_objects": got["two_objects"],
            "consistency_real": consistency(judge, real, task.background)["consistency"],
            "images": n, "receptive_field": rf, "image_size": task.shapes_data.image_size}


def text_prompts(spec: GenStudySpec, task, per_group: int) -> dict[str, list[dict]]:
    """{"seen": items, "unseen": items}: the first test scenes (training options, nothing
    excluded) without / with a held-out colour-shape combination, `per_group` each."""
    from ..data import ShapesDataset

    ds = task.shapes_data
    held = {tuple(h.split()) for h in spec.holdout}
    test = ShapesDataset(50 * per_group, image_size=ds.image_size, split="test", seed=ds.seed,
                         task=ds.task, num_objects=ds.num_objects, shapes=ds.shapes,
                         colours=ds.colours, noise=ds.noise, clutter=ds.clutter,
                         colour_jitter=ds.colour_jitter, background=ds.background)
    groups = {"seen": [], "unseen": []}
    for i in range(len(test)):
        objects = test.scene(i)
        group = "unseen" if any((o.colour, o.shape) in held for o in objects) else "seen"
        if len(groups[group]) < per_group:
            groups[group].append(test[i])
        if all(len(g) == per_group for g in groups.values()):
            break
    return groups


def _measure_text(spec, model, net, task, run_dir, grids) -> dict:
    from ..eval.composition import composition, summarize
    from ..train.tasks.generation import save_grid

    judge = _judge(task)
    out, shown = {}, []
    for group, items in text_prompts(spec, task, spec.eval.prompts).items():
        cond = task.encode_prompts([it["caption"] for it in items])
        fake = task.sample_images(net, cond, len(items), spec.eval.seed)
        scenes = [it["attributes"]["objects"] for it in items]
        real = torch.stack([it["image"] for it in items])
        out[group] = summarize(composition(judge, fake, scenes, task.background))
        out[f"{group}_real"] = summarize(composition(judge, real, scenes, task.background))
        out[f"{group}_two_objects"] = sum(len(s) == 2 for s in scenes)
        shown.append((fake[: spec.eval.grid // 2], [it["caption"] for it in items]
                      [: spec.eval.grid // 2]))
    save_grid(torch.cat([s[0] for s in shown]), grids / f"text_{model['label']}.png", cols=8)
    out["grid_prompts"] = [p for s in shown for p in s[1]]
    return out


@register_kind("generation_study", GenStudySpec)
def run_generation_study(spec: GenStudySpec, out: Path) -> dict:
    try:  # before anything trains
        flops = {name: check_flops(spec, name) for name in spec.measurements}
    except (TypeError, KeyError) as e:
        raise ValueError(f"{spec.name}: building the models: {e}") from None
    runs = [Run(f"{meas} {m['label']}", _run_id(meas, m["label"]), run_config(spec, m, meas),
                measure, (spec, m, meas, out))
            for meas in MEASUREMENTS if meas in spec.measurements for m in spec.models]

    def describe(r):
        if r["measurement"] == "class":
            d = r["at_default"]
            return (f"fd_shapes {d.get('fd_shapes', float('nan')):.1f}, shape "
                    f"{pct(d.get('cond_acc_shape'))}%, colour {pct(d.get('cond_acc_colour'))}%")
        if r["measurement"] == "consistency":
            return f"consistency {pct(r['consistency'])}%"
        return (f"prompt seen {pct(r['seen']['prompt'])}%, unseen "
                f"{pct(r['unseen']['prompt'])}%")

    results = train_runs(spec, out, runs, describe=describe)
    if is_main_process():
        curves = [Panel(f"{meas}: {CURVE_METRIC[meas]}", f"val/{CURVE_METRIC[meas]}",
                        runs=[(m["label"], out / "runs" / _run_id(meas, m["label"]),
                               flops[meas][m["label"]]) for m in spec.models])
                  for meas in MEASUREMENTS if meas in spec.measurements]
        write_study_report(spec, results, flops, out, curves)
    return {"experiment": spec.name, "out_dir": str(out), "runs": results}
