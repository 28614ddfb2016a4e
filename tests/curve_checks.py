"""What every study's quick twin must show of its compute curve (mmtx.experiments.curves)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from mmtx.experiments.curves import sentence


def check_compute_curve(out: Path, panels: list[str], min_points: int = 2) -> list[dict]:
    """The study in `out` drew compute_curve.png (a readable PNG), embedded it, and states for
    each panel (its title) every pair's crossover as `sentence` words the results.json
    numbers; every model's curve has at least `min_points` evaluations. Returns the panels."""
    png = Path(out) / "compute_curve.png"
    assert png.stat().st_size > 0
    with Image.open(png) as img:
        img.verify()  # a whole, readable PNG
    report = (Path(out) / "report.md").read_text()
    assert "## Compute curve" in report and "![compute curve](compute_curve.png)" in report
    got = json.loads((Path(out) / "results.json").read_text())["compute_curves"]
    assert [p["title"] for p in got] == panels
    for p in got:
        # the panel's sentences: its own lines, up to the next panel
        line = report.split(f"\n- {p['title']} (")[1].split("\n- ")[0]
        assert p["curves"], p["title"]
        for label, c in p["curves"].items():
            assert len(c["x"]) >= min_points, (p["title"], label)
            assert c["x"] == sorted(c["x"]) and all(lo <= m <= hi for lo, m, hi in
                                                     zip(c["lo"], c["mean"], c["hi"]))
        n = len(p["curves"])
        assert len(p["crossovers"]) == n * (n - 1) // 2
        for c in p["crossovers"]:
            assert sentence(c, p["what"]) in line
    return got
