"""Experiment files: a grid of training runs that share settings, then one report.

An experiment YAML has a `name`, a `base` training config (the schema of `mmtx train`), a `grid`
(one mapping or a list of them; each is the product of its `model`, `dataset`, `seed` and
`fraction` lists) and `report` options. `run_experiment` trains every run through the engine,
skips runs that already finished, and writes results.json, report.md and PNG plots.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

_TOP_KEYS = ("name", "description", "base", "grid", "report", "jobs")
_GRID_KEYS = ("model", "dataset", "seed", "fraction")


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
    name: str
    base: dict
    runs: list[RunSpec]
    description: str = ""
    report: dict = field(default_factory=dict)
    jobs: int = 1  # runs trained at once, each in its own process


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _entry(value, what: str) -> tuple[str, dict, str]:
    """A grid entry is a name or {name, args, label} -> (name, args, label)."""
    if isinstance(value, str):
        return value, {}, value
    if isinstance(value, dict) and "name" in value:
        return value["name"], dict(value.get("args") or {}), value.get("label", value["name"])
    raise ValueError(f"grid {what} entries must be a name or a mapping with 'name', got {value!r}")


def set_key(tree: dict, dotted: str, value) -> None:
    """tree["a"]["b"] = value for dotted "a.b", creating mappings on the way."""
    *parents, last = dotted.split(".")
    for key in parents:  # a number indexes a list, e.g. "grid.0.seed"
        tree = tree[int(key)] if isinstance(tree, list) else tree.setdefault(key, {})
    tree[int(last) if isinstance(tree, list) else last] = value


def read_spec(path, overrides=(), valid_keys=_TOP_KEYS) -> dict:
    """An experiment YAML as a dict, with `--set KEY=VALUE` overrides applied and keys checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    spec = yaml.safe_load(path.read_text()) or {}
    for item in overrides or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        set_key(spec, key, yaml.safe_load(value))
    unknown = sorted(set(spec) - set(valid_keys))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown}; valid: {list(valid_keys)}")
    return spec


def load_experiment(path, overrides=()) -> Experiment:
    path = Path(path)
    spec = read_spec(path, overrides)
    base = spec.get("base") or {}
    data = base.get("data", {})
    runs = []
    for grid in _as_list(spec.get("grid") or {}):
        bad = sorted(set(grid) - set(_GRID_KEYS))
        if bad:
            raise ValueError(f"{path}: unknown grid keys {bad}; valid: {list(_GRID_KEYS)}")
        if "model" not in grid:
            raise ValueError(f"{path}: every grid needs a 'model' list")
        datasets = _as_list(grid.get("dataset", {"name": data.get("name", "shapes"),
                                                 "args": data.get("args", {})}))
        for m, d, seed, frac in itertools.product(
            _as_list(grid["model"]), datasets, _as_list(grid.get("seed", 0)),
            _as_list(grid.get("fraction", 1.0)),
        ):
            model, model_args, label = _entry(m, "model")
            dname, dargs, _ = _entry(d, "dataset")
            if not 0 < float(frac) <= 1:
                raise ValueError(f"{path}: fraction must be in (0, 1], got {frac}")
            runs.append(RunSpec(model, model_args, label, dname, dargs, int(seed), float(frac)))
    if not runs:
        raise ValueError(f"{path}: the grid defines no runs")
    ids = [r.run_id for r in runs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: runs repeat; give repeated models distinct labels")
    jobs = spec.get("jobs", 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"{path}: jobs must be a positive int, got {jobs!r}")
    return Experiment(spec.get("name", path.stem), base, runs, spec.get("description", ""),
                      spec.get("report") or {}, jobs)


def run_config(exp: Experiment, run: RunSpec) -> dict:
    """The training config of one run: the experiment's base with the run's choices set."""
    cfg = copy.deepcopy(exp.base)
    set_key(cfg, "model.name", run.model)
    set_key(cfg, "model.args", {**cfg.get("model", {}).get("args", {}), **run.model_args})
    set_key(cfg, "data.name", run.dataset)
    set_key(cfg, "data.args", {**cfg.get("data", {}).get("args", {}), **run.data_args})
    set_key(cfg, "data.fraction", run.fraction)
    set_key(cfg, "train.seed", run.seed)
    set_key(cfg, "logging.group", exp.name)
    set_key(cfg, "logging.name", f"{exp.name}/{run.run_id}")
    return cfg


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(results: list[dict]) -> list[dict]:
    """One row per (model, dataset, fraction): means over seeds of every reported number."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["model"], r["dataset"], r["fraction"]), []).append(r)
    rows = []
    for (model, dataset, fraction), rs in groups.items():
        acc, acc_std = mean_std([r["test_accuracy"] for r in rs])
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


def _human(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def check_targets(rows: list[dict], targets: dict) -> list[str]:
    """Lines saying, per model with a target test accuracy, whether the full-data mean met it."""
    lines = []
    full = max(r["fraction"] for r in rows)
    for r in sorted(rows, key=lambda r: r["model"]):
        target = targets.get(r["model"])
        if target is None or r["fraction"] != full:
            continue
        gap = r["test_accuracy"] - float(target)
        verdict = "met" if gap >= 0 else f"MISSED by {-100 * gap:.2f} points"
        lines.append(f"- {r['model']} on {r['dataset']}: {100 * r['test_accuracy']:.2f}% "
                     f"vs target {100 * float(target):.1f}%: {verdict}")
    return lines


def format_table(rows: list[dict]) -> str:
    """A Markdown table of `summarize` rows (also readable in a terminal)."""
    head = ("| model | dataset | data | test acc (%) | params | MFLOPs/img | train img/s "
            "| infer img/s | wall (s) | precision |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: (r["dataset"], -r["fraction"], r["model"])):
        acc = f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f}"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {100 * r['fraction']:g}% | {acc} "
            f"(n={r['seeds']}) | {_human(r['params'])} | {r['flops'] / 1e6:.1f} "
            f"| {r['train_images_per_s']:.0f} | {r['infer_images_per_s']:.0f} "
            f"| {r['wall_s']:.1f} | {r['precision']} |"
        )
    return "\n".join(lines)


def _is_main_process() -> bool:
    """Under `accelerate launch` / torchrun every process trains; only rank 0 writes reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)  # atomic: a crash never leaves half a results file


def write_report(exp: Experiment, results: list[dict], out: Path) -> str:
    """results.json, report.md and the plots; returns the table printed to the console."""
    from .viz.plots import plot_confusion_matrices, plot_data_efficiency, plot_learning_curves

    rows = summarize(results)
    _write_json(out / "results.json", {"experiment": exp.name, "description": exp.description,
                                       "runs": results, "summary": rows})
    table = format_table(rows)
    md = [f"# {exp.name}", "", exp.description.strip(), "", "## Results", "", table, "",
          "Test accuracy is the mean ± std over seeds (n = number of seeds); "
          "FLOPs are forward FLOPs per image (torch.utils.flop_counter, a multiply-add = 2); "
          "images/s are measured on this machine during the run.", ""]
    targets = check_targets(rows, exp.report.get("targets") or {})
    if targets:
        md += ["## Targets", "", *targets, ""]
    full = max(r["fraction"] for r in results)
    by_model = {r["model"]: r for r in results if r["fraction"] == full and r["seed"] ==
                min(x["seed"] for x in results)}
    curves = {m: r["curve"] for m, r in by_model.items() if r.get("curve")}
    if curves:
        plot_learning_curves(curves, out / "learning_curves.png")
        md += ["## Learning curves", "", "![learning curves](learning_curves.png)", ""]
    fractions = sorted({r["fraction"] for r in results})
    if len(fractions) > 1:
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
    (out / "report.md").write_text("\n".join(md))
    return table


def _read_curve(metrics_path: Path, key: str) -> list[dict]:
    """Validation points from a run's metrics.jsonl: [{"step", "wall_s", "value"}]."""
    points = []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            row = json.loads(line)
            if key in row:
                points.append({"step": row["step"], "wall_s": row.get("time/train_s", 0.0),
                               "value": row[key]})
    return points


def _confusion(predictions: list[dict], num_classes: int) -> list[list[int]]:
    cm = [[0] * num_classes for _ in range(num_classes)]
    for p in predictions:
        cm[p["label"]][p["pred"]] += 1
    return cm


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


def _execute(exp: Experiment, run: RunSpec, out: Path, rollout_images: int) -> dict:
    """Train one run (or read its finished result) and measure what the report needs."""
    from .data import build_dataset
    from .models.summary import model_summary
    from .train import train

    run_dir = out / "runs" / run.run_id
    done = run_dir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = run_config(exp, run)
    saved = run_dir / "config.yaml"
    if saved.exists() and (yaml.safe_load(saved.read_text()) or {}).get("model") != cfg["model"]:
        # resuming would load another architecture's checkpoint into this model
        raise ValueError(f"{run_dir} holds an unfinished run of another model config "
                         f"({saved}); delete that directory or pass another --out")
    res = train(cfg, run_dir, resume="auto")
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
        "curve": _read_curve(run_dir / "metrics.jsonl", "val/acc"),
        "confusion": _confusion(res["test_predictions"], test.num_classes),
        "class_names": list(test.class_names), "run_dir": str(run_dir),
    }
    if not _is_main_process():
        return result
    if rollout_images and hasattr(model, "forward_features") and hasattr(model, "patch_embed"):
        from .viz.rollout import plot_rollout, rollout_maps

        idx = range(min(rollout_images, len(test)))
        images = torch.stack([test[i]["image"] for i in idx]).to(next(model.parameters()).device)
        titles = [test.class_names[test[i]["label"]] for i in idx]
        path = plot_rollout(images, rollout_maps(model, images), out / "attention_rollout.png",
                            titles=titles, ncols=min(8, len(titles)))
        result["rollout_png"] = str(path)
    _write_json(done, result)  # written last: its presence means the run is complete
    return result


def _run_all(exp: Experiment, out: Path, plan: list) -> list[dict]:
    """Train the runs in order, or `exp.jobs` at a time in worker processes.

    Small models use one core poorly (per-op overheads dominate), so on a 2-core CPU two
    one-thread runs side by side finish an experiment about twice as fast as one after another.
    """
    todo = [(run, n) for run, n in plan if not (out / "runs" / run.run_id / "result.json").exists()]
    jobs = 1 if int(os.environ.get("WORLD_SIZE", "1")) > 1 else min(exp.jobs, len(todo))
    if jobs <= 1:
        results = []
        for i, (run, n) in enumerate(plan, 1):
            if _is_main_process():
                print(f"[{i}/{len(plan)}] {run.run_id}", flush=True)
            results.append(_execute(exp, run, out, n))
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    print(f"{len(todo)} of {len(plan)} runs to train, {jobs} at a time", flush=True)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_execute, exp, run, out, n): run for run, n in todo}
        for i, done in enumerate(as_completed(futures), 1):
            print(f"[{i}/{len(todo)}] {futures[done].run_id}: test accuracy "
                  f"{100 * done.result()['test_accuracy']:.2f}%", flush=True)
    return [_execute(exp, run, out, n) for run, n in plan]  # all finished: reads result.json


def run_experiment(path, out_dir=None, overrides=()) -> dict:
    """Run (or finish) every run of an experiment file, then write and print the report."""
    kind = (yaml.safe_load(Path(path).read_text()) or {}).get("kind") \
        if Path(path).is_file() else None
    if kind == "rnn_vs_transformer":  # a study with its own runner and report
        from .text_experiments import run_rnn_vs_transformer
        return run_rnn_vs_transformer(path, out_dir, overrides)
    exp = load_experiment(path, overrides)
    out = Path(out_dir) if out_dir else Path("runs") / exp.name
    out.mkdir(parents=True, exist_ok=True)
    rollout_model = exp.report.get("attention_rollout")  # a model label, or None
    rollout_n = int(exp.report.get("rollout_images", 8))
    full = max(r.fraction for r in exp.runs)
    first_seed = min(r.seed for r in exp.runs)
    plan = [(run, rollout_n if run.label == rollout_model and run.fraction == full
             and run.seed == first_seed else 0) for run in exp.runs]
    results = _run_all(exp, out, plan)
    if not _is_main_process():
        return {"experiment": exp.name, "out_dir": str(out), "runs": results}
    table = write_report(exp, results, out)
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return {"experiment": exp.name, "out_dir": str(out), "runs": results}
