"""Compute curves: every study's main metric against the training images each model has seen
(and, where the study knows each model's forward FLOPs per image, against training FLOPs),
one plot per study, with the budget from which one model stays ahead of another.

A kind names what to draw as `Panel`s (a group of runs compared on one metric, e.g. one
measurement or one dataset) and passes them to `report.write_report(curves=...)`; the points
are read from each run's own evaluations (metrics.jsonl, every `train.eval_every` steps) and
its global batch size (summary.json), so finished runs read back from the cache draw too.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TRAIN_FLOPS_PER_FORWARD = 3  # a training step: the forward pass and a backward of about twice it


@dataclass
class Panel:
    """Runs compared on one metric. `runs`: (label, run_dir, forward FLOPs per image or None);
    runs sharing a label are seeds of one model (drawn as their mean and min-max spread)."""

    title: str
    metric: str  # the key of the runs' evaluations, e.g. "val/acc"
    higher_better: bool = True
    runs: list[tuple[str, Path, float | None]] = field(default_factory=list)
    what: str = "images"  # what one training example is, for the axis and the sentences


def read_curve(metrics_path: Path, key: str) -> list[dict]:
    """`key`'s points in a run's metrics.jsonl: [{"step", "wall_s", "value"}]."""
    points = []
    if Path(metrics_path).exists():
        for line in Path(metrics_path).read_text().splitlines():
            row = json.loads(line)
            if key in row:
                points.append({"step": row["step"], "wall_s": row.get("time/train_s", 0.0),
                               "value": row[key]})
    return points


def read_points(run_dir, key: str) -> list[tuple[int, float]]:
    """(training images seen, value) of each evaluation of `key` logged in the run's
    metrics.jsonl; images seen = step x the run's global batch size (summary.json). Values
    logged as non-finite are left out; a step evaluated twice keeps its last value."""
    run_dir = Path(run_dir)
    summary = run_dir / "summary.json"
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: not found; a compute curve needs a finished run "
                                f"(its global batch size)")
    batch = json.loads(summary.read_text()).get("global_batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"{summary}: global_batch_size must be a positive int, got {batch!r}")
    points = {}
    for p in read_curve(run_dir / "metrics.jsonl", key):
        v = p["value"]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            points[p["step"] * batch] = float(v)
    return sorted(points.items())


def mean_curve(seeds: list[list[tuple[int, float]]]) -> dict | None:
    """The seeds' curves at the budgets every seed evaluated: {"x", "mean", "lo", "hi",
    "seeds"} (lo/hi: the smallest and largest seed); None when no budget is shared."""
    common = sorted(set.intersection(*(set(x for x, _ in s) for s in seeds))) if seeds else []
    if not common:
        return None
    vals = np.array([[dict(s)[x] for x in common] for s in seeds])  # (seeds, budgets)
    return {"x": common, "mean": vals.mean(0).tolist(), "lo": vals.min(0).tolist(),
            "hi": vals.max(0).tolist(), "seeds": len(seeds)}


def _on_common_budgets(a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both curves ((x, y) lists) at every budget either evaluated inside the range both
    cover; between evaluations linear in log-budget (curves of models with different FLOPs
    per image are evaluated at different FLOPs)."""
    (xa, ya), (xb, yb) = (np.asarray(a[0], float), np.asarray(a[1], float)), \
        (np.asarray(b[0], float), np.asarray(b[1], float))
    lo, hi = max(xa[0], xb[0]), min(xa[-1], xb[-1])
    xs = np.unique(np.concatenate([xa, xb]))
    xs = xs[(xs >= lo) & (xs <= hi)]
    return xs, np.interp(np.log(xs), np.log(xa), ya), np.interp(np.log(xs), np.log(xb), yb)


def crossover(a: str, curve_a, b: str, curve_b, higher_better: bool = True,
              tol: float = 0.0) -> dict:
    """Which of two curves ((x, y) lists, x increasing and > 0) leads, and from which budget.

    {"pair", "leader", "other", "at", "lead_changes", "budgets"}: `at` is the first budget
    from which the leader stays ahead at every later budget, None when it led at every budget
    both evaluated (no crossover); leader None when the two are within `tol` at the largest shared
    budget (no one stays ahead); "budgets" 0 when the curves share no budget range."""
    xs, ya, yb = _on_common_budgets(curve_a, curve_b)
    if not len(xs):
        return {"pair": [a, b], "leader": None, "other": None, "at": None, "lead_changes": 0,
                "budgets": 0}
    gap = (ya - yb) if higher_better else (yb - ya)
    sign = np.where(gap > tol, 1, np.where(gap < -tol, -1, 0))  # +1: a ahead, -1: b ahead
    changes = int(sum(1 for s, t in itertools.pairwise(sign[sign != 0]) if s != t))
    if sign[-1] == 0:
        return {"pair": [a, b], "leader": None, "other": None, "at": None,
                "lead_changes": changes, "budgets": len(xs), "tied_at": float(xs[-1])}
    leader, other = (a, b) if sign[-1] > 0 else (b, a)
    start = len(sign) - 1
    while start > 0 and sign[start - 1] == sign[-1]:
        start -= 1
    return {"pair": [a, b], "leader": leader, "other": other,
            "at": float(xs[start]) if start else None, "lead_changes": changes,
            "budgets": len(xs)}


def crossovers(curves: dict[str, tuple[list, list]], higher_better: bool = True,
               tol: float = 0.0) -> list[dict]:
    """`crossover` for every pair of labelled curves, in label order."""
    return [crossover(a, curves[a], b, curves[b], higher_better, tol)
            for a, b in itertools.combinations(curves, 2)]


def sentence(c: dict, budget: str = "images") -> str:
    """A `crossover` result as one sentence, e.g. "vit overtakes cnn at 38.4k images"."""
    from ..viz.plots import si  # matplotlib, only when a report is written

    a, b = c["pair"]
    if not c["budgets"]:
        return f"{a} and {b} share no evaluated budget"
    if c["leader"] is None:
        return (f"no one stays ahead: {a} and {b} are tied at the largest evaluated budget "
                f"({si(c['tied_at'])} {budget})")
    if c["budgets"] == 1:  # one shared evaluation (e.g. train.eval_every 0): a point, no curve
        return f"{c['leader']} leads {c['other']} at the only budget both evaluated"
    if c["at"] is None:
        return f"no crossover: {c['leader']} leads {c['other']} at every evaluated budget"
    more = f" (after {c['lead_changes'] - 1} earlier lead change(s))" \
        if c["lead_changes"] > 1 else ""
    return f"{c['leader']} overtakes {c['other']} at {si(c['at'])} {budget}{more}"


def compute_curves(out: Path, panels: list[Panel], name: str = "compute_curve.png") -> dict:
    """The study's compute curves read, compared and drawn: {"md": report lines, "results":
    JSON-able curves and crossovers}. The PNG is `out/name`."""
    from ..viz.plots import plot_compute_curves

    drawn, results, md = [], [], []
    with_flops = any(f is not None for p in panels for _, _, f in p.runs)
    for p in panels:
        by_label: dict[str, list] = {}
        flops: dict[str, float | None] = {}
        unread = []  # a run whose files cannot be read loses its curve, not the study's report
        for label, run_dir, f in p.runs:
            try:
                points = read_points(run_dir, p.metric)
            except (OSError, ValueError) as e:
                unread.append(f"{label}: {e}")
                points = []
            by_label.setdefault(label, []).append(points)
            flops[label] = f
        curves = {k: c for k, v in by_label.items() if (c := mean_curve([s for s in v if s]))}
        images = {k: (c["x"], c["mean"]) for k, c in curves.items()}
        cross = crossovers(images, p.higher_better)
        entry = {"title": p.title, "metric": p.metric, "higher_better": p.higher_better,
                 "what": p.what, "curves": curves, "crossovers": cross}
        direction = "higher" if p.higher_better else "lower"
        ylabel = f"{p.metric} ({direction} is better)"
        xlabel = f"training {p.what} seen"
        drawn.append({"title": p.title, "xlabel": xlabel, "ylabel": ylabel, "curves": curves,
                      "marks": [{"x": c["at"], "text": f"{c['leader']} > {c['other']}"}
                                for c in cross if c["at"] is not None]})
        lines = [sentence(c, p.what) for c in cross] if len(curves) > 1 else \
            [f"only {next(iter(curves))} has a curve of {p.metric}"] if curves else []
        missing = sorted(set(by_label) - set(curves))
        if missing:
            lines.append(f"no curve for {', '.join(missing)}: no evaluation of {p.metric} "
                         f"logged at a budget every seed shares")
        lines += [f"not read: {u}" for u in unread]
        if with_flops:
            known = {k: c for k, c in curves.items() if flops.get(k)}
            per_flop = {k: {**c, "x": [TRAIN_FLOPS_PER_FORWARD * flops[k] * x for x in c["x"]]}
                        for k, c in known.items()}
            fcross = crossovers({k: (c["x"], c["mean"]) for k, c in per_flop.items()},
                                p.higher_better)
            entry.update(flops_per_image=flops, crossovers_by_flops=fcross)
            drawn.append({"title": f"{p.title}: by training FLOPs", "ylabel": ylabel,
                          "xlabel": "training FLOPs (images x forward FLOPs per image x 3)",
                          "curves": per_flop,
                          "marks": [{"x": c["at"], "text": f"{c['leader']} > {c['other']}"}
                                    for c in fcross if c["at"] is not None]})
            if len(per_flop) > 1:
                lines += [f"by training FLOPs: {sentence(c, 'FLOPs')}" for c in fcross]
        md += [f"- {p.title} ({p.metric}, {direction} is better):", *(f"  - {x}." for x in lines)]
        results.append(entry)
    plot_compute_curves(drawn, out / name, ncols=2 if with_flops else 1)
    seeds = max((c["seeds"] for e in results for c in e["curves"].values()), default=1)
    spread = " Lines are the mean over seeds, bands the lowest and highest seed." \
        if seeds > 1 else ""
    flops_too = " and training FLOPs" if with_flops else ""
    md = ["## Compute curve", "",
          "The main metric at each evaluation during training, against the training examples "
          f"each model had seen (step x global batch size){flops_too}; a marked budget is "
          "where one model overtakes another and stays ahead at every later evaluation."
          f"{spread}", "", f"![compute curve]({name})", "", *md, ""]
    return {"md": md, "results": results}
