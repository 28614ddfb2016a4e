"""The experiment runner end to end on the quick CNN-vs-ViT experiment."""

import json
import re
from pathlib import Path

import pytest

from mmtx.experiments import grid
from mmtx.data import build_dataset
from mmtx.experiments import load_experiment, run_experiment

QUICK = Path(__file__).parents[1] / "experiments" / "cnn_vs_vit_quick.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    return out, run_experiment(QUICK, out_dir=out)


def test_quick_experiment_writes_report_results_and_plots(finished):
    out, res = finished
    for name in ("report.md", "results.json", "learning_curves.png", "data_efficiency.png",
                 "confusion.png", "attention_rollout.png"):
        assert (out / name).stat().st_size > 0, name
    runs = json.loads((out / "results.json").read_text())["runs"]
    test_set = build_dataset("shapes", "test", num_samples=192, image_size=16)
    assert len(runs) == len(load_experiment(QUICK).runs) == 9
    for r in runs:
        for key in ("model", "dataset", "seed", "fraction", "test_accuracy", "params", "flops",
                    "train_images_per_s", "wall_s"):
            assert key in r, key
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["params"] > 0 and r["flops"] > 0
        assert sum(map(sum, r["confusion"])) == len(test_set)  # every test image counted once


def test_report_numbers_equal_results_json(finished):
    out, _ = finished
    summary = json.loads((out / "results.json").read_text())["summary"]
    report = (out / "report.md").read_text()
    for row in summary:
        line = next(l for l in report.splitlines()
                    if l.startswith(f"| {row['model']} | {row['dataset']} | "
                                    f"{100 * row['fraction']:g}% |"))
        acc = re.search(r"\| ([\d.]+) ± ([\d.]+) \(n=(\d+)\)", line)
        assert float(acc.group(1)) == pytest.approx(100 * row["test_accuracy"], abs=0.006)
        assert float(acc.group(2)) == pytest.approx(100 * row["test_accuracy_std"], abs=0.006)
        assert int(acc.group(3)) == row["seeds"]


def test_summary_means_are_over_seeds(finished):
    out, _ = finished
    data = json.loads((out / "results.json").read_text())
    for row in data["summary"]:
        accs = [r["test_accuracy"] for r in data["runs"] if r["model"] == row["model"]
                and r["fraction"] == row["fraction"]]
        assert row["test_accuracy"] == pytest.approx(sum(accs) / len(accs))


def test_second_run_does_no_training(finished, monkeypatch):
    out, first = finished

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mmtx.train.train", no_training)
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = run_experiment(QUICK, out_dir=out)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == written
    assert [r["test_accuracy"] for r in again["runs"]] == \
        [r["test_accuracy"] for r in first["runs"]]


def test_bad_experiment_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment file"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {modle: [vit]}\n")
    with pytest.raises(ValueError, match="unknown grid keys \\['modle'\\]"):
        load_experiment(bad)
    bad.write_text("name: x\ngrid: {model: [vit], fraction: 1.5}\n")
    with pytest.raises(ValueError, match="fraction must be in"):
        load_experiment(bad)


def test_overrides_and_run_config():
    exp = load_experiment(QUICK, ["base.train.max_steps=2", "grid.0.seed=[3]"])
    assert exp.base["train"]["max_steps"] == 2
    cfg = grid.run_config(exp, exp.runs[0])
    assert cfg["train"]["seed"] == 3 and cfg["model"]["name"] == "convnet_small"
    assert cfg["logging"]["group"] == "cnn_vs_vit_quick"


def test_unfinished_run_of_another_model_is_not_resumed(tmp_path):
    exp = load_experiment(QUICK)
    run = exp.runs[0]
    run_dir = tmp_path / "runs" / run.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {name: resnet18_small, args: {}}\n")
    with pytest.raises(ValueError, match="another model config"):
        grid.execute(exp, run, tmp_path, 0)
