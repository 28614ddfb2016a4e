"""The relation study kind: relation_quick.yaml end to end, its report, and its checks."""

import json
from pathlib import Path

import pytest
from curve_checks import check_compute_curve

from mmtx.experiments import run_experiment
from mmtx.experiments.registry import load

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
QUICK = EXPERIMENTS / "relation_quick.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("relation")
    return out, run_experiment(QUICK, out_dir=out)


def test_quick_study_writes_report_results_and_figures(finished):
    out, res = finished
    for name in ("report.md", "results.json", "accuracy_vs_distance.png", "learning_curves.png",
                 "vit_attention.png"):
        assert (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert sorted((r["model"], r["seed"]) for r in runs) == sorted(
        (m, s) for m in ("cnn", "cnn_whole_rf", "vit", "cct") for s in (0, 1))
    for r in runs:
        assert set(r["band_accuracy"]) == {"near", "far"}
        assert all(0.0 <= a <= 1.0 for a in r["band_accuracy"].values())
        assert r["flops"] > 0 and r["params"] > 0 and r["curve"]
    assert {r["model"]: r["lr"] for r in runs} == {"cnn": 3e-3, "cnn_whole_rf": 3e-3,
                                                   "vit": 3e-3, "cct": 1e-3}
    rf = {r["model"]: (r["receptive_field"], r["sees_whole_image"]) for r in runs}
    # widths [4, 8]: two stages 3,5,6 | 10,14,16; dilated: 64 px, every unit sees 32 px
    assert rf["cnn"] == (16, False) and rf["cnn_whole_rf"] == (64, True)
    assert rf["vit"] == (None, None) and rf["cct"] == (None, None)
    att = next(r["attention"] for r in runs if r.get("attention"))
    assert att["images"] == 32 and att["top_patches"] == 4 and att["patches"] == 16
    for key in ("both_by_rollout", "both_by_some_last_layer_head", "both_by_random_patches"):
        assert 0.0 <= att[key] <= 1.0
    report = (out / "report.md").read_text()
    for text in ("| cnn | 16 |", "| 0.001 |", "64 (whole image)", "global (attention)",
                 "MFLOPs per image", "## What held", "- Claim:", "patches of 16"):
        assert text in report, text
    summary = {r["model"]: r for r in results["summary"]}
    for m in summary.values():  # the report's means are the runs' means
        accs = [r["band_accuracy"]["far"] for r in runs if r["model"] == m["model"]]
        assert m["far"][0] == pytest.approx(sum(accs) / len(accs))


def test_quick_study_draws_its_compute_curve(finished):
    out, res = finished
    (panel,) = check_compute_curve(out, ["same/different at the training distances"])
    # two seeds a model, evaluated at steps 2 and 4 of 32 images
    assert {k: (c["seeds"], c["x"]) for k, c in panel["curves"].items()} == {
        m: (2, [64, 128]) for m in ("cnn", "cnn_whole_rf", "vit", "cct")}
    assert panel["flops_per_image"] == {r["model"]: r["flops"] for r in res["runs"]}


def test_second_run_reads_every_run_back(finished, monkeypatch):
    out, res = finished

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mmtx.train.train", fail)
    assert run_experiment(QUICK, out_dir=out)["runs"] == res["runs"]


def test_object_patches_as_the_study_reads_them():
    import torch

    from mmtx.eval.grounding import patch_coverage

    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True  # top-left patch of a 2x2 grid
    masks[1, 5:7, 1:6] = True  # bottom-left and bottom-right patches
    assert patch_coverage(masks, (2, 2)).flatten(1).tolist() == [[True, False, False, False],
                                                                  [False, False, True, True]]


@pytest.mark.parametrize("override, match", [
    ("models=[]", "'models' must be a non-empty list"),
    ("models=[{name: convnet_small}]", "each model needs 'name' and 'label'"),
    ("seeds=[]", "'seeds' must be a non-empty list"),
    ("models=[{name: convnet_small, label: a, lr: 1}]",
     r"unknown key 'lr' for model 'a'; valid: name, label, args, optim"),
    ("models=[{name: convnet_small, label: a, optim: 1}]", "model 'a': optim must be a mapping"),
    ("bands={near: [0.3]}", r"band 'near': expected \[lo, hi\]"),
    ("report.far_band=very_far", "report.far_band 'very_far' is not one of the bands"),
    ("base.data.args.task=shape", "base.data must be shapes with task: relation"),
    ("base.data.args.distance=[0.5, 0.2]", "distance: expected 0 < lo <= hi <= 1"),
])
def test_bad_specs_fail_before_training(tmp_path, override, match, monkeypatch):
    monkeypatch.setattr("mmtx.train.train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=match):
        run_experiment(QUICK, out_dir=tmp_path, overrides=[override])


def test_spec_reads_as_the_relation_kind():
    kind, spec = load(QUICK)
    assert kind.name == "relation" and spec.jobs == 1 and list(spec.bands) == ["near", "far"]
