"""Compute curves: crossovers on hand-made curves, the reader on a metrics.jsonl written here,
and the plot and sentences of the shared report section."""

import json

import pytest
from PIL import Image

from mmtx.experiments.curves import (
    Panel,
    compute_curves,
    crossover,
    crossovers,
    mean_curve,
    read_points,
    sentence,
)

X = [100, 200, 400, 800, 1600]


def test_one_crossover_is_the_first_budget_from_which_the_leader_stays_ahead():
    c = crossover("cnn", (X, [0.5, 0.6, 0.7, 0.8, 0.85]), "vit", (X, [0.3, 0.5, 0.75, 0.9, 0.95]))
    assert (c["leader"], c["other"], c["at"], c["lead_changes"]) == ("vit", "cnn", 400, 1)
    assert sentence(c) == "vit overtakes cnn at 400 images"


def test_no_crossover_when_one_model_leads_at_every_budget():
    c = crossover("cnn", (X, [0.5, 0.6, 0.7, 0.8, 0.9]), "vit", (X, [0.1, 0.2, 0.3, 0.4, 0.5]))
    assert (c["leader"], c["at"], c["lead_changes"]) == ("cnn", None, 0)
    assert sentence(c) == "no crossover: cnn leads vit at every evaluated budget"


def test_one_shared_budget_is_not_called_a_curve():
    c = crossover("a", ([100], [0.5]), "b", ([100, 200], [0.4, 0.9]))
    assert (c["leader"], c["budgets"]) == ("a", 1)
    assert sentence(c) == "a leads b at the only budget both evaluated"


def test_lower_is_better_flips_the_leader():
    fd_a, fd_b = [50, 40, 30, 20, 10], [45, 42, 35, 25, 15]
    c = crossover("a", (X, fd_a), "b", (X, fd_b), higher_better=False)
    assert (c["leader"], c["at"]) == ("a", 200)
    c = crossover("a", (X, fd_a), "b", (X, fd_b), higher_better=True)
    assert (c["leader"], c["at"]) == ("b", 200)


def test_ties():
    # tied at the last budget: no one stays ahead
    c = crossover("a", (X, [0.1, 0.5, 0.6, 0.7, 0.8]), "b", (X, [0.2, 0.4, 0.6, 0.9, 0.8]))
    assert c["leader"] is None and c["tied_at"] == 1600
    assert sentence(c) == ("no one stays ahead: a and b are tied at the largest evaluated "
                           "budget (1.6k images)")
    # a tie before the final lead: the leader stays ahead only from the budget after it
    c = crossover("a", (X, [0.2, 0.5, 0.6, 0.7, 0.9]), "b", (X, [0.1, 0.5, 0.5, 0.6, 0.8]))
    assert (c["leader"], c["at"], c["lead_changes"]) == ("a", 400, 0)
    # within the tolerance counts as a tie
    c = crossover("a", (X, [0.5] * 5), "b", (X, [0.51] * 5), tol=0.02)
    assert c["leader"] is None


def test_several_lead_changes_report_the_last_one():
    a, b = [0.5, 0.3, 0.6, 0.4, 0.7], [0.4, 0.5, 0.5, 0.6, 0.6]
    c = crossover("a", (X, a), "b", (X, b))
    assert (c["leader"], c["at"], c["lead_changes"]) == ("a", 1600, 4)
    assert sentence(c) == "a overtakes b at 1.6k images (after 3 earlier lead change(s))"


def test_every_pair_of_several_models():
    curves = {"cnn": (X, [0.6, 0.7, 0.8, 0.85, 0.86]), "vit": (X, [0.2, 0.5, 0.82, 0.9, 0.95]),
              "cct": (X, [0.5, 0.75, 0.85, 0.88, 0.9])}
    got = {tuple(c["pair"]): (c["leader"], c["at"]) for c in crossovers(curves)}
    assert got == {("cnn", "vit"): ("vit", 400), ("cnn", "cct"): ("cct", 200),
                   ("vit", "cct"): ("vit", 800)}


def test_curves_at_different_budgets_compare_where_both_were_evaluated():
    # b is evaluated at other budgets (e.g. by FLOPs); compared inside the shared range only
    a = ([100, 1000, 10000], [0.1, 0.5, 0.9])
    b = ([300, 3000, 30000], [0.4, 0.6, 0.7])
    c = crossover("a", a, "b", b)
    # linear in log-budget: at 1000 b reads 0.505 (a 0.5), at 3000 a reads 0.691 (b 0.6)
    assert (c["leader"], c["at"], c["budgets"]) == ("a", 3000, 4)
    assert crossover("a", ([1, 2], [0, 1]), "b", ([5, 6], [0, 1]))["budgets"] == 0


def _run(tmp_path, name, rows, batch=32):
    run = tmp_path / name
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"global_batch_size": batch}))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_read_points_is_step_times_global_batch(tmp_path):
    run = _run(tmp_path, "r", [
        {"step": 5, "train/loss": 1.0},  # a training log row: no evaluation
        {"step": 10, "val/acc": 0.25, "time/train_s": 1.0},
        {"step": 20, "val/acc": "nan"},  # a non-finite value as the logger writes it
        {"step": 30, "val/acc": 0.5},
        {"step": 30, "test/acc": 0.4},  # the final test evaluation is another key
        {"step": 30, "val/acc": 0.55},  # evaluated twice: the last one counts
    ], batch=48)
    assert read_points(run, "val/acc") == [(480, 0.25), (1440, 0.55)]
    (run / "summary.json").unlink()
    with pytest.raises(FileNotFoundError, match="summary.json"):
        read_points(run, "val/acc")


def test_mean_curve_over_seeds_keeps_shared_budgets():
    c = mean_curve([[(10, 0.2), (20, 0.4), (30, 0.6)], [(10, 0.4), (20, 0.8)]])
    assert c["x"] == [10, 20] and c["seeds"] == 2
    assert c["mean"] == pytest.approx([0.3, 0.6])
    assert (c["lo"], c["hi"]) == ([0.2, 0.4], [0.4, 0.8])
    assert mean_curve([[(10, 0.1)], [(20, 0.2)]]) is None


def test_section_draws_one_png_and_states_crossovers(tmp_path):
    steps = [1, 2, 4, 8]
    runs = []
    for seed in (0, 1):
        runs.append(("cnn", _run(tmp_path, f"cnn{seed}", [
            {"step": s, "val/acc": v + 0.01 * seed} for s, v in zip(steps, [0.5, 0.6, 0.7, 0.8])]),
            1e6))
        runs.append(("vit", _run(tmp_path, f"vit{seed}", [
            {"step": s, "val/acc": v} for s, v in zip(steps, [0.2, 0.5, 0.8, 0.9])]), 4e6))
    got = compute_curves(tmp_path, [Panel("shapes", "val/acc", True, runs)])
    img = Image.open(tmp_path / "compute_curve.png")
    assert img.size[0] > 100 and img.size[1] > 100
    text = "\n".join(got["md"])
    assert "![compute curve](compute_curve.png)" in text
    # 4 images a step (summary's global batch 32): vit leads from step 4 = 128 images
    assert "- shapes (val/acc, higher is better):\n  - vit overtakes cnn at 128 images." in text
    # by FLOPs the vit pays 4x per image: it never catches up inside the shared range
    assert "  - by training FLOPs: no crossover: cnn leads vit at every evaluated budget." in text
    entry = got["results"][0]
    assert entry["curves"]["cnn"]["seeds"] == 2
    assert entry["curves"]["cnn"]["mean"] == pytest.approx([0.505, 0.605, 0.705, 0.805])


def test_a_run_without_evaluations_or_files_loses_its_curve_not_the_report(tmp_path):
    a = _run(tmp_path, "a", [{"step": s, "val/acc": 0.1 * s} for s in (1, 2)])
    b = _run(tmp_path, "b", [{"step": 2, "test/acc": 0.5}])  # no validation split
    c = tmp_path / "c"  # killed before it finished: no summary.json
    c.mkdir()
    got = compute_curves(tmp_path, [Panel("p", "val/acc", True, [("a", a, None), ("b", b, None),
                                                                   ("c", c, None)])])
    text = "\n".join(got["md"])
    assert "  - only a has a curve of val/acc." in text
    assert "  - no curve for b, c: no evaluation of val/acc logged" in text
    assert "  - not read: c: " in text and "summary.json: not found" in text
    assert list(got["results"][0]["curves"]) == ["a"]
    assert (tmp_path / "compute_curve.png").stat().st_size > 0
