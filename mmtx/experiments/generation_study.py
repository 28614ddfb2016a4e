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

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .pool import is_main_process
from .registry import register_kind
from .report import human, markdown_table, read_curve, write_report
from .runs import Run, Spec, merge, train_runs

MEASUREMENTS = ("class", "consistency", "text")
ROLES = ("cnn", "dit", "hybrid")
ATTRS = ("shape", "colour", "size", "relation", "prompt")


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
    """Forward FLOPs of one image (a multiply-add counts 2), condition included."""
    from torch.utils.flop_counter import FlopCounterMode

    x, t, cond = _example(task)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, t, **cond)
    model.train(was)
    return int(counter.get_total_flops())


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
    if spec.eval.samples < 4 or spec.eval.prompts < 1 or spec.eval.consistency_samples < 1:
        raise ValueError(f"{spec.name}: eval.samples >= 4, eval.prompts and "
                         f"eval.consistency_samples >= 1 expected, got {spec.eval}")
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


# ------------------------------------------------------------------------------ report
def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def summarize_runs(spec: GenStudySpec, results: list[dict]) -> list[dict]:
    """One row per model: the three measurements side by side."""
    by = {(r["model"], r["measurement"]): r for r in results}
    rows = []
    for m in spec.models:
        row = {"model": m["label"], "role": m["role"], "model_name": m["name"]}
        c = by.get((m["label"], "class"))
        if c:
            d = c["at_default"]
            row.update(params=c["params"], flops=c["flops"], images_per_s=c["train_images_per_s"],
                       fd=d.get("fd_shapes"), fd_floor=d.get("fd_shapes_floor"),
                       shape=d.get("cond_acc_shape"), colour=d.get("cond_acc_colour"),
                       sample_ms=1000 * d["sample_s_per_image"])
        k = by.get((m["label"], "consistency"))
        if k:
            row.update(consistency=k["consistency"], consistency_real=k["consistency_real"],
                       receptive_field=k["receptive_field"])
            row.setdefault("params", k["params"])
        t = by.get((m["label"], "text"))
        if t:
            row.update(text={g: t[g] for g in ("seen", "unseen", "seen_real", "unseen_real")})
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = ["model", "params", "MFLOPs/img", "train img/s", "fd_shapes (floor)",
              "cond_acc shape %", "cond_acc colour %", "consistency %",
              *[f"text {a} % seen / unseen" for a in ATTRS], "sample ms/img"]
    body = []
    for r in rows:
        text = r.get("text") or {}
        body.append([
            f"{r['model']} ({r['role']})", human(r["params"]) if "params" in r else "-",
            f"{r['flops'] / 1e6:.1f}" if "flops" in r else "-",
            f"{r['images_per_s']:.0f}" if r.get("images_per_s") else "-",
            f"{r['fd']:.1f} ({r['fd_floor']:.1f})" if r.get("fd") is not None else "-",
            _pct(r.get("shape")), _pct(r.get("colour")), _pct(r.get("consistency")),
            *[f"{_pct(text['seen'][a])} / {_pct(text['unseen'][a])}" if text else "-"
              for a in ATTRS],
            f"{r['sample_ms']:.1f}" if "sample_ms" in r else "-"])
    return markdown_table(header, body)


def _plots(spec: GenStudySpec, results: list[dict], out: Path) -> list[str]:
    from ..viz.plots import plt, save_figure

    made = []
    runs = [r for r in results if r["measurement"] == "class"]
    if not runs:
        return made
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, r in enumerate(runs):
        pts = r["fd_curve"]
        if pts:
            ax.plot([p["step"] for p in pts], [p["value"] for p in pts], "o-", color=f"C{i}",
                    label=f"{r['model']} ({r['role']})")
    floor = runs[0]["at_default"].get("fd_shapes_floor")
    if floor is not None:
        ax.axhline(floor, color="gray", ls=":", label="real vs real (floor, study samples)")
    ax.set(xlabel="training step", ylabel="fd_shapes (lower is better)",
           title="fd_shapes during training (the runs' own evaluations)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    made.append(save_figure(fig, out / "fd_vs_step.png").name)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, r in enumerate(runs):
        pts = sorted((float(s), v) for s, v in r["sweep"].items() if "cond_acc_all" in v)
        if not pts:
            continue
        xs = [100 * v["cond_acc_all"] for _, v in pts]
        ys = [v["fd_shapes"] for _, v in pts]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=f"{r['model']} ({r['role']})")
        for (s, _), x, y in zip(pts, xs, ys):
            ax.annotate(f"{s:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set(xlabel="cond_acc, shape and colour both right (%)", ylabel="fd_shapes",
           title="classifier-free guidance sweep (labels: scale)")
    ax.legend(fontsize=8)
    made.append(save_figure(fig, out / "cfg_sweep.png").name)
    return made


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-4) / max(n, 1))


def verdict(spec: GenStudySpec, rows: list[dict], results: list[dict]) -> list[str]:
    """Plain sentences: which claims held on this data and budget."""
    lines = []
    role = {r["role"]: r for r in rows}
    n_cons = spec.eval.consistency_samples
    cnn, dit, hyb = role.get("cnn"), role.get("dit"), role.get("hybrid")
    if cnn and "consistency" in cnn:
        rf = cnn.get("receptive_field")
        side = next((r["image_size"] for r in results if r["measurement"] == "consistency"), 32)
        for other in (dit, hyb):
            if not other or "consistency" not in other:
                continue
            gap = other["consistency"] - cnn["consistency"]
            se = math.hypot(_se(cnn["consistency"], n_cons), _se(other["consistency"], n_cons))
            held = "held" if gap > 2 * se else ("did NOT hold (the CNN did better)" if gap < -2 *
                                                  se else "did NOT hold (no clear difference)")
            lines.append(
                f"- Attention keeps far-apart parts consistent ({other['model']} vs the CNN): "
                f"{held}: {_pct(other['consistency'])}% vs {_pct(cnn['consistency'])}% of "
                f"samples with two matching objects (difference {100 * gap:+.1f} points, "
                f"2 standard errors {200 * se:.1f}). The CNN's theoretical receptive field is "
                f"{rf} px on {side} px images" + (" (it covers the whole image, so the claim's "
                                                  "premise, a field too small to see both "
                                                  "objects, does not apply to it)"
                                                  if rf and rf >= 2 * side - 1 else "") + ".")
    if cnn and dit and "shape" in cnn and "shape" in dit:
        better = "the CNN" if (cnn["fd"] or 0) < (dit["fd"] or 0) else "the DiT"
        lines.append(f"- At matched FLOPs and steps, {better} had the lower fd_shapes "
                     f"(CNN {cnn['fd']:.1f}, DiT {dit['fd']:.1f}, hybrid "
                     f"{hyb['fd']:.1f})." if hyb and hyb.get("fd") is not None else
                     f"- At matched FLOPs and steps, {better} had the lower fd_shapes.")
    if hyb and "fd" in hyb and cnn and dit:
        best_fd = min(rows, key=lambda r: r.get("fd") or float("inf"))["model"]
        best_c = max(rows, key=lambda r: r.get("consistency") or 0)["model"]
        held = "held" if best_fd == hyb["model"] and best_c == hyb["model"] else "did NOT hold"
        lines.append(f"- The hybrid (convolutions for detail, attention for composition) is "
                     f"best at both: {held} (lowest fd_shapes: {best_fd}; highest "
                     f"consistency: {best_c}).")
    texts = [r for r in rows if r.get("text")]
    if texts:
        best = max(texts, key=lambda r: r["text"]["seen"]["prompt"])
        lines.append(
            "- Text-conditioned generators turn descriptions into matching images: best whole-"
            f"prompt accuracy {_pct(best['text']['seen']['prompt'])}% on seen and "
            f"{_pct(best['text']['unseen']['prompt'])}% on unseen combinations ({best['model']}); "
            f"the measure reads {_pct(best['text']['seen_real']['prompt'])}% / "
            f"{_pct(best['text']['unseen_real']['prompt'])}% on the real images of those prompts.")
        for r in texts:
            s, u = r["text"]["seen"], r["text"]["unseen"]
            lines.append(f"  - {r['model']}: held-out combinations cost "
                         f"{100 * (s['prompt'] - u['prompt']):+.1f} points of whole-prompt "
                         f"accuracy (shape {100 * (s['shape'] - u['shape']):+.1f}, colour "
                         f"{100 * (s['colour'] - u['colour']):+.1f}).")
    return lines


def target_lines(spec: GenStudySpec, rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        if r["role"] != "dit" or r.get("shape") is None:
            continue
        for attr in ("shape", "colour"):
            v = r[attr]
            verdict = "met" if v >= spec.target else \
                f"MISSED by {100 * (spec.target - v):.1f} points"
            lines.append(f"- {r['model']} cond_acc {attr}: {_pct(v)}% vs target "
                         f"{100 * spec.target:g}%: {verdict}.")
    return lines


def write_study_report(spec: GenStudySpec, results: list[dict], flops: dict,
                       out: Path) -> str:
    rows = summarize_runs(spec, results)
    table = format_table(rows)
    flop_lines = []
    for name, per in flops.items():
        ratio = max(per.values()) / max(1, min(per.values()))
        flop_lines.append(f"- {name}: " + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in per.items())
                          + f" MFLOPs per image forward (largest / smallest {ratio:.2f}, "
                          f"allowed {1 + spec.flop_tolerance:.2f})")
    print("FLOPs per image (torch.utils.flop_counter):\n" + "\n".join(flop_lines))
    plots = _plots(spec, results, out)
    steps = sorted({r["steps"] for r in results})
    md = ["## Results", "", table, "",
          f"Steps per run: {', '.join(map(str, steps))}. fd_shapes, cond_acc and sample time: "
          f"{spec.eval.samples} fresh samples (classes evenly) at each run's guidance scale; "
          "fd_shapes against real test scenes, its floor the same distance between two real "
          "sets of the same size. consistency: "
          f"{spec.eval.consistency_samples} samples of the twins model (chance, two objects "
          "drawn independently: 1/48 = 2.1%). text: "
          f"{spec.eval.prompts} test prompts with only seen colour-shape combinations and "
          f"{spec.eval.prompts} with a held-out one ({', '.join(spec.holdout)}); per attribute "
          "the fraction of named objects drawn right, relation on two-object prompts, prompt = "
          "everything right. sample ms/img: one thread, Euler, the runs' steps, guidance "
          "doubling the batch; train img/s: with the other runs sharing the CPU.", "",
          "Forward FLOPs per image, checked before training:", "", *flop_lines, ""]
    real_rows = [r for r in rows if r.get("text") or "consistency" in r]
    if real_rows:
        r0 = real_rows[0]
        md += ["The measures on real test images (their ceilings): consistency "
               f"{_pct(r0.get('consistency_real'))}%; text " + ", ".join(
                   f"{a} {_pct(r0['text']['seen_real'][a])} / "
                   f"{_pct(r0['text']['unseen_real'][a])}%" for a in ATTRS)
               + " (seen / unseen)." if r0.get("text") else "", ""]
    for name in plots:
        md += [f"![{name}]({name})", ""]
    md += ["## Samples", ""]
    for meas in MEASUREMENTS:
        for r in results:
            if r["measurement"] == meas and (out / "grids" / f"{meas}_{r['model']}.png").exists():
                md += [f"{meas}, {r['model']} ({r['role']}):", "",
                       f"![{meas} {r['model']}](grids/{meas}_{r['model']}.png)", ""]
    text = next((r for r in results if r["measurement"] == "text"), None)
    if text:
        md += ["Text grids: the first row seen prompts, the second unseen: " +
               "; ".join(f"\"{p}\"" for p in text["grid_prompts"]), ""]
    md += ["## What held", "", *verdict(spec, rows, results), "",
           "## Target", "", *(target_lines(spec, rows) or ["- no DiT in this study"]), ""]
    write_report(out, title=spec.name, description=spec.description, sections=md,
                 results={"experiment": spec.name, "description": spec.description,
                          "flops": flops, "runs": results, "summary": rows}, table=table)
    return table


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
                    f"{_pct(d.get('cond_acc_shape'))}%, colour {_pct(d.get('cond_acc_colour'))}%")
        if r["measurement"] == "consistency":
            return f"consistency {_pct(r['consistency'])}%"
        return (f"prompt seen {_pct(r['seen']['prompt'])}%, unseen "
                f"{_pct(r['unseen']['prompt'])}%")

    results = train_runs(spec, out, runs, describe=describe)
    if is_main_process():
        write_study_report(spec, results, flops, out)
    return {"experiment": spec.name, "out_dir": str(out), "runs": results}
