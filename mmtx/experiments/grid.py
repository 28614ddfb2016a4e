"""The `grid` study kind (the default): training runs that share settings, then one report.

A grid file has a `name`, a `base` training config (the schema of `mmtx train`), a `grid` (one
mapping or a list of them; each is the product of its `model`, `dataset`, `seed` and `fraction`
lists), `jobs` (runs trained at once) and `report` options. The main job, CNN vs ViT, is one.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..keys import check_keys
from .pool import is_main_process
from .registry import register_kind
from .report import Panel, check_targets, human, mean_std, read_curve, write_report
from .runs import Run, Spec, train_runs
from .spec import load_spec

_GRID_KEYS = ("model", "dataset", "seed", "fraction")


@dataclass
class GridReport:
    attention_rollout: str | None = None  # the model label whose attention rollout is drawn
    rollout_images: int = 8
    targets: dict = field(default_factory=dict)  # model label -> full-data test accuracy


@dataclass
class GridSpec(Spec):
    kind: str = "grid"
    grid: list | dict = field(default_factory=list)
    report: GridReport = field(default_factory=GridReport)


@dataclass
class RunSpec:
    """One training run of an experiment."""

    model: str
    model_args: dict
    label: str  # how the report names the model
    dataset: str
    data_args: dict
    seed: int
    fraction: float

    @property
    def run_id(self) -> str:
        return f"{self.label}-{self.dataset}-f{self.fraction:g}-s{self.seed}"


@dataclass
class Experiment:
    """A grid file expanded into its runs."""

    spec: GridSpec
    runs: list[RunSpec]

    name = property(lambda self: self.spec.name)
    base = property(lambda self: self.spec.base)
    description = property(lambda self: self.spec.description)
    report = property(lambda self: self.spec.report)
    jobs = property(lambda self: self.spec.jobs)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _entry(value, what: str) -> tuple[str, dict, str]:
    """A grid entry is a name or {name, args, label} -> (name, args, label)."""
    if isinstance(value, str):
        return value, {}, value
    if isinstance(value, dict) and "name" in value:
        return value["name"], dict(value.get("args") or {}), value.get("label", value["name"])
    raise ValueError(f"grid {what} entries must be a name or a mapping with 'name', got {value!r}")


def experiment_from_spec(spec: GridSpec, where: str = "") -> Experiment:
    where = f"{where}: " if where else ""
    data = spec.base.get("data", {})
    runs = []
    for grid in _as_list(spec.grid):
        if not isinstance(grid, dict):
            raise ValueError(f"{where}each grid must be a mapping, got {grid!r}")
        try:
            check_keys(grid, _GRID_KEYS, "grid key")
        except ValueError as e:
            raise ValueError(f"{where}{e}") from None
        if "model" not in grid:
            raise ValueError(f"{where}every grid needs a 'model' list")
        datasets = _as_list(grid.get("dataset", {"name": data.get("name", "shapes"),
                                                 "args": data.get("args", {})}))
        for m, d, seed, frac in itertools.product(
            _as_list(grid["model"]), datasets, _as_list(grid.get("seed", 0)),
            _as_list(grid.get("fraction", 1.0)),
        ):
            model, model_args, label = _entry(m, "model")
            dname, dargs, _ = _entry(d, "dataset")
            if not 0 < float(frac) <= 1:
                raise ValueError(f"{where}fraction must be in (0, 1], got {frac}")
            runs.append(RunSpec(model, model_args, label, dname, dargs, int(seed), float(frac)))
    if not runs:
        raise ValueError(f"{where}the grid defines no runs")
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}runs repeat; give repeated models distinct labels")
    return Experiment(spec, runs)


def load_experiment(path, overrides=()) -> Experiment:
    """A grid experiment file read, checked and expanded into its runs."""
    return experiment_from_spec(load_spec(path, overrides, GridSpec), str(path))


def run_config(exp: Experiment, run: RunSpec) -> dict:
    """The training config of one run: the experiment's base with the run's choices set."""
    data = exp.base.get("data", {})
    return exp.spec.config({"name": run.model, "args": run.model_args}, run.run_id,
                           data={"name": run.dataset, "fraction": run.fraction,
                                 "args": {**data.get("args", {}), **run.data_args}},
                           train={"seed": run.seed})


# ------------------------------------------------------------------------------ one run
def _inference_images_per_s(model, shape, precision: str, batch: int = 256) -> float:
    """Median images/s of eval-mode forward passes on random input of the data's shape."""
    device = next(model.parameters()).device
    x = torch.randn(batch, *shape, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    model.eval()
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for i in range(6):
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # the first pass warms up
                times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def measure(res: dict, run_dir: Path, run: RunSpec, out: Path, rollout_images: int) -> dict:
    """What the report needs of one trained run."""
    from ..data import build_dataset
    from ..models.summary import model_summary

    model = res["model_module"]
    test = build_dataset(run.dataset, "test", **run.data_args)
    size = test.image_size if isinstance(test.image_size, (tuple, list)) else \
        (test.image_size, test.image_size)
    shape = (test.in_chans, *size)
    summary = model_summary(model, shape)
    result = {
        "model": run.label, "model_name": run.model, "dataset": run.dataset, "seed": run.seed,
        "fraction": run.fraction, "test_accuracy": res["test_accuracy"],
        "val_accuracy": res.get("val_accuracy"), "params": summary["params"],
        "flops": summary["flops"], "train_images_per_s": res["train_images_per_s"],
        "infer_images_per_s": _inference_images_per_s(model, shape, res["precision"]),
        "wall_s": res["wall_s"], "steps": res["steps"], "precision": res["precision"],
        "curve": read_curve(run_dir / "metrics.jsonl", "val/acc"),
        "confusion": res["test_result"]["confusion"],
        "class_names": list(test.class_names), "run_dir": str(run_dir),
    }
    if rollout_images and is_main_process():
        _draw_rollout(model, test, rollout_images, out / "attention_rollout.png")
    return result


def _draw_rollout(model, test, n: int, path: Path) -> None:
    from ..viz.rollout import plot_rollout, rollout_maps, supports_rollout

    if not supports_rollout(model):
        return
    idx = range(min(n, len(test)))
    images = torch.stack([test[i]["image"] for i in idx]).to(next(model.parameters()).device)
    titles = [test.class_names[test[i]["label"]] for i in idx]
    plot_rollout(images, rollout_maps(model, images), path, titles=titles,
                 ncols=min(8, len(titles)))


# ------------------------------------------------------------------------------ report
def summarize(results: list[dict]) -> list[dict]:
    """One row per (model, dataset, fraction): means over seeds of every reported number."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["model"], r["dataset"], r["fraction"]), []).append(r)
    rows = []
    for (model, dataset, fraction), rs in groups.items():
        acc, acc_std = mean_std(r["test_accuracy"] for r in rs)
        rows.append({
            "model": model, "dataset": dataset, "fraction": fraction, "seeds": len(rs),
            "test_accuracy": acc, "test_accuracy_std": acc_std,
            "params": rs[0]["params"], "flops": rs[0]["flops"],
            "train_images_per_s": statistics.fmean(r["train_images_per_s"] for r in rs),
            "infer_images_per_s": statistics.fmean(r["infer_images_per_s"] for r in rs),
            "wall_s": statistics.fmean(r["wall_s"] for r in rs),
            "precision": rs[0].get("precision", "fp32"),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `summarize` rows (also readable in a terminal)."""
    head = ("| model | dataset | data | test acc (%) | params | MFLOPs/img | train img/s "
            "| infer img/s | wall (s) | precision |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r["dataset"], -r["fraction"], r["model"])):
        acc = f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f}"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {100 * r['fraction']:g}% | {acc} "
            f"(n={r['seeds']}) | {human(r['params'])} | {r['flops'] / 1e6:.1f} "
            f"| {r['train_images_per_s']:.0f} | {r['infer_images_per_s']:.0f} "
            f"| {r['wall_s']:.1f} | {r['precision']} |"
        )
    return "\n".join(lines)


def _figures(results: list[dict], rows: list[dict], out: Path) -> list[str]:
    from ..viz.plots import plot_confusion_matrices, plot_data_efficiency, plot_learning_curves

    md = []
    full = max(r["fraction"] for r in results)
    first_seed = min(x["seed"] for x in results)
    by_model = {r["model"]: r for r in results if r["fraction"] == full and r["seed"] == first_seed}
    curves = {m: r["curve"] for m, r in by_model.items() if r.get("curve")}
    if curves:
        plot_learning_curves(curves, out / "learning_curves.png")
        md += ["## Learning curves", "", "![learning curves](learning_curves.png)", ""]
    if len({r["fraction"] for r in results}) > 1:
        points = {}
        for row in rows:
            points.setdefault(row["model"], []).append(
                (row["fraction"], row["test_accuracy"], row["test_accuracy_std"]))
        plot_data_efficiency(points, out / "data_efficiency.png")
        md += ["## Data efficiency", "", "![data efficiency](data_efficiency.png)", ""]
    matrices = {m: r["confusion"] for m, r in by_model.items() if r.get("confusion")}
    if matrices:
        names = next(r["class_names"] for r in by_model.values() if r.get("confusion"))
        plot_confusion_matrices(matrices, names, out / "confusion.png")
        md += ["## Confusion matrices (test split)", "", "![confusion](confusion.png)", ""]
    if (out / "attention_rollout.png").exists():
        md += ["## Where the ViT looks (attention rollout)", "",
               "![attention rollout](attention_rollout.png)", ""]
    return md


def write_grid_report(exp: Experiment, results: list[dict], out: Path) -> str:
    """results.json, report.md and the plots; returns the table printed to the console."""
    rows = summarize(results)
    table = format_table(rows)
    sections = ["## Results", "", table, "",
                "Test accuracy is the mean ± std over seeds (n = number of seeds); "
                "FLOPs are forward FLOPs per image (torch.utils.flop_counter, a multiply-add = 2); "
                "images/s are measured on this machine during the run.", ""]
    full = max(r["fraction"] for r in rows)
    values = {r["model"]: (r["dataset"], r["test_accuracy"]) for r in rows
              if r["fraction"] == full}
    targets = check_targets(values, exp.report.targets, "test accuracy")
    if targets:
        sections += ["## Targets", "", *targets, ""]
    sections += _figures(results, rows, out)
    write_report(out, title=exp.name, description=exp.description, sections=sections,
                 results={"experiment": exp.name, "description": exp.description,
                          "runs": results, "summary": rows}, table=table,
                 curves=curve_panels(exp, results, out))
    return table


def curve_panels(exp: Experiment, results: list[dict], out: Path) -> list[Panel]:
    """Validation accuracy against images seen, per dataset, of the full-data runs (`results`
    in the order of `exp.runs`)."""
    full = max(r.fraction for r in exp.runs)
    panels: dict[str, Panel] = {}
    for run, r in zip(exp.runs, results):
        if run.fraction == full:
            panel = panels.setdefault(run.dataset, Panel(run.dataset, "val/acc"))
            panel.runs.append((run.label, Path(out) / "runs" / run.run_id, r["flops"]))
    return list(panels.values())


@register_kind("grid", GridSpec)
def run_grid(spec: GridSpec, out: Path) -> dict:
    exp = experiment_from_spec(spec)
    rollout_model = exp.report.attention_rollout
    full = max(r.fraction for r in exp.runs)
    first_seed = min(r.seed for r in exp.runs)
    runs = []
    for run in exp.runs:
        n = exp.report.rollout_images if (run.label == rollout_model and run.fraction == full
                                          and run.seed == first_seed) else 0
        runs.append(Run(run.run_id, run.run_id, run_config(exp, run), measure, (run, out, n)))
    results = train_runs(spec, out, runs,
                         describe=lambda r: f"test accuracy {100 * r['test_accuracy']:.2f}%")
    if is_main_process():
        write_grid_report(exp, results, out)
    return {"experiment": exp.name, "out_dir": str(out), "runs": results}
