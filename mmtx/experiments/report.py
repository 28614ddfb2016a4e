"""The report every study writes: report.md, results.json and PNGs in the experiment
directory, the table printed to the console, and target checks stated plainly."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..io import write_text
from .cache import write_json
from .curves import Panel, compute_curves, read_curve  # noqa: F401  read_curve: kinds import it here


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def human(n: float) -> str:
    """A parameter count as 18.5K / 1.20M."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def check_targets(values: dict[str, tuple[str, float]], targets: dict, what: str,
                  percent: bool = True) -> list[str]:
    """Lines saying, per label with a target, whether its value met it.

    values: {label: (where, value)}, e.g. {"cnn": ("shapes", 0.99)}; targets: {label: target}.
    A target naming no measured label is reported too, so a typo cannot hide a miss."""
    scale, unit = (100.0, "%") if percent else (1.0, "")
    lines = []
    for label in sorted(targets):
        target = float(targets[label])
        if label not in values:
            lines.append(f"- {label}: target {scale * target:g}{unit} but no run of that name "
                         f"(models: {', '.join(sorted(values))})")
            continue
        where, value = values[label]
        gap = value - target
        verdict = "met" if gap >= 0 else f"MISSED by {scale * -gap:.2f} points"
        lines.append(f"- {label} on {where}: {what} {scale * value:.2f}{unit} vs target "
                     f"{scale * target:g}{unit}: {verdict}")
    return lines


def write_report(out: Path, *, title: str, description: str, sections: list[str],
                 results: dict, table: str | None = None,
                 curves: list[Panel] | None = None) -> Path:
    """results.json and report.md (atomic writes), then the table and the report's path on the
    console. `sections` are Markdown blocks in order (figures already saved under `out`);
    `curves`: the study's compute curves (mmtx.experiments.curves), drawn to
    compute_curve.png and stated after the sections, their numbers in results.json."""
    out = Path(out)
    if curves:
        drawn = compute_curves(out, curves)
        sections = [*sections, *drawn["md"]]
        results = {**results, "compute_curves": drawn["results"]}
    write_json(out / "results.json", results)
    md = [f"# {title}", "", (description or "").strip(), "", *sections]
    write_text(out / "report.md", "\n".join(md).rstrip() + "\n")
    if table:
        print(table)
    print(f"\nreport: {out / 'report.md'}", flush=True)
    return out / "report.md"
