"""Experiments as a package of study kinds: every kind's _quick file end to end, the shared
spec reader, run cache, worker pool progress and report."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from curve_checks import check_compute_curve
from procs import alive, descendants

from mmtx.data import build_dataset
from mmtx.experiments import grid, list_kinds, load_experiment, run_experiment
from mmtx.experiments.runs import train_and_measure

EXPERIMENTS = Path(__file__).parents[1] / "experiments"
QUICK = EXPERIMENTS / "cnn_vs_vit_quick.yaml"
RNN_QUICK = EXPERIMENTS / "rnn_vs_transformer_quick.yaml"


def _quick_files() -> dict[str, list[Path]]:
    kinds: dict[str, list[Path]] = {}
    for path in sorted(EXPERIMENTS.glob("*_quick.yaml")):
        kinds.setdefault(yaml.safe_load(path.read_text()).get("kind", "grid"), []).append(path)
    return kinds


@pytest.fixture
def no_training(monkeypatch):
    """From here on, any training fails the test: finished runs must be read back."""

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("mmtx.train.train", fail)


def test_every_study_kind_has_a_quick_file():
    assert set(_quick_files()) == set(list_kinds())


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp")
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        res = run_experiment(QUICK, out_dir=out)
    return out, res, console.getvalue()


def test_quick_experiment_writes_report_results_and_plots(finished):
    out, res, _ = finished
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


def test_quick_report_has_a_compute_curve_with_flops(finished):
    out, res, _ = finished
    (panel,) = check_compute_curve(out, ["shapes"])
    # the full-data runs: two seeds of each model, evaluated at steps 3 and 6 of 32 images
    assert set(panel["curves"]) == {"cnn", "vit", "cct"}
    assert all(c["seeds"] == 2 and c["x"] == [96, 192] for c in panel["curves"].values())
    flops = {r["model"]: r["flops"] for r in res["runs"]}
    assert panel["flops_per_image"] == flops and len(panel["crossovers_by_flops"]) == 3
    report = (out / "report.md").read_text()
    assert report.count("by training FLOPs: ") == 3


def test_progress_with_two_workers_is_one_line_per_run(finished):
    out, res, console = finished
    assert "\r" not in console  # no progress bars fighting over one terminal line
    done = re.findall(r"^\[(\d+)/9\] (\S+): test accuracy [\d.]+% \(\S+\) \| elapsed \S+, "
                      r"ETA \S+$", console, flags=re.M)
    assert sorted(int(i) for i, _ in done) == list(range(1, 10))
    assert sorted(run for _, run in done) == sorted(r.run_id for r in load_experiment(QUICK).runs)
    # each worker's own output went to its run's log instead
    assert all((out / "runs" / run / "train.log").exists() for _, run in done)


def test_report_numbers_equal_results_json(finished):
    out, _, _ = finished
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
    out, _, _ = finished
    data = json.loads((out / "results.json").read_text())
    for row in data["summary"]:
        accs = [r["test_accuracy"] for r in data["runs"] if r["model"] == row["model"]
                and r["fraction"] == row["fraction"]]
        assert row["test_accuracy"] == pytest.approx(sum(accs) / len(accs))


def test_second_run_does_no_training(finished, request):
    out, first, _ = finished

    request.getfixturevalue("no_training")
    written = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    again = run_experiment(QUICK, out_dir=out)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == written
    assert [r["test_accuracy"] for r in again["runs"]] == \
        [r["test_accuracy"] for r in first["runs"]]


def test_rnn_vs_transformer_quick_end_to_end(tmp_path, request):
    """The study at toy scale: every (model, distance) trained once, the timing table, the
    probe per layer, the plots, and a rerun that trains nothing."""
    res = run_experiment(RNN_QUICK, tmp_path)
    assert sorted((r["model"], r["distance"]) for r in res["recall"]) == [
        ("LSTM", 2), ("LSTM", 4), ("Transformer", 2), ("Transformer", 4)]
    assert {(r["model"], r["length"]) for r in res["time_per_step"]} == {
        (m, n) for m in ("LSTM", "Transformer") for n in (8, 16)}
    probe = res["probe"]
    assert probe["layers"] == ["input", "block 1", "block 2", "output"]
    for key in ("probe_acc_trained", "probe_acc_untrained"):
        assert len(probe[key]) == 4 and all(0.0 <= a <= 1.0 for a in probe[key])
    report = (tmp_path / "report.md").read_text()
    for r in res["recall"]:
        assert f"{100 * r['test_accuracy']:.1f}%" in report
    for name in ("rnn_vs_transformer.png", "apple_probe.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    # evaluated after each of 3 steps of 16 sequences; no FLOPs panel (none counted)
    panels = check_compute_curve(tmp_path, ["recall at distance 2", "recall at distance 4"])
    assert all(c["x"] == [16, 32, 48] for p in panels for c in p["curves"].values())
    assert "by training FLOPs" not in report

    request.getfixturevalue("no_training")
    again = run_experiment(RNN_QUICK, tmp_path)
    assert again["recall"] == res["recall"] and again["probe"] == res["probe"]


def test_unknown_kind_lists_the_known_ones(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("kind: gird\nname: x\n")
    from mmtx.experiments.registry import list_kinds

    assert {"grid", "rnn_vs_transformer", "vision_language"} <= set(list_kinds())
    with pytest.raises(ValueError, match="unknown experiment kind 'gird'; known kinds: "
                                         + ", ".join(sorted(list_kinds()))):
        run_experiment(path, tmp_path)


@pytest.mark.parametrize("text, hint", [
    ("jbos: 2\n", "did you mean jobs"),
    ("report: {target: {cnn: 0.9}}\n", "did you mean report.targets"),
    ("jobs: two\n", "'jobs': expected an integer, got 'two'"),
])
def test_spec_keys_and_types_are_checked(tmp_path, text, hint):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\ngrid: {model: [convnet_small]}\n" + text)
    with pytest.raises(ValueError, match=re.escape(hint)):
        load_experiment(path)


def test_base_config_is_checked_before_any_run(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nbase: {optim: {weight_decy: 0.1}}\ngrid: {model: [vit]}\n")
    with pytest.raises(ValueError, match="base: unknown config key 'optim.weight_decy'; did "
                                         "you mean optim.weight_decay"):
        run_experiment(path, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_bad_experiment_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiment file"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid: {modle: [vit]}\n")
    with pytest.raises(ValueError, match="unknown grid key 'modle'; did you mean model\\?"):
        load_experiment(bad)
    bad.write_text("name: x\ngrid: {model: [vit], fraction: 1.5}\n")
    with pytest.raises(ValueError, match="fraction must be in"):
        load_experiment(bad)
    with pytest.raises(ValueError, match="grid.5.seed: '5' must index a list of 2 entries"):
        load_experiment(QUICK, ["grid.5.seed=1"])


def test_overrides_and_run_config():
    exp = load_experiment(QUICK, ["base.train.max_steps=2", "grid.0.seed=[3]"])
    assert exp.base["train"]["max_steps"] == 2
    cfg = grid.run_config(exp, exp.runs[0])
    assert cfg["train"]["seed"] == 3 and cfg["model"]["name"] == "convnet_small"
    assert cfg["logging"]["group"] == "cnn_vs_vit_quick"


def test_targets_are_checked_and_a_missing_label_is_reported():
    from mmtx.experiments.report import check_targets

    lines = check_targets({"cnn": ("shapes", 0.97), "vit": ("shapes", 0.93)},
                          {"cnn": 0.95, "vit": 0.95, "ccct": 0.95}, "test accuracy")
    assert lines == [
        "- ccct: target 95% but no run of that name (models: cnn, vit)",
        "- cnn on shapes: test accuracy 97.00% vs target 95%: met",
        "- vit on shapes: test accuracy 93.00% vs target 95%: MISSED by 2.00 points"]


def test_unfinished_run_of_another_model_is_not_resumed(tmp_path):
    exp = load_experiment(QUICK)
    run = exp.runs[0]
    run_dir = tmp_path / "runs" / run.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {name: resnet18_small, args: {}}\n")
    with pytest.raises(ValueError, match="another model config"):
        train_and_measure(run_dir, grid.run_config(exp, run), grid.measure, (run, tmp_path, 0))


@pytest.mark.parametrize("path", sorted(EXPERIMENTS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_yaml_file_in_experiments_reads(path):
    """Each experiment file reads as its kind's schema (its base config checked), and each
    training config as `mmtx train` reads it: no misspelt key ships."""
    from mmtx.experiments.registry import load
    from mmtx.train import load_config

    tree = yaml.safe_load(path.read_text())
    if "kind" in tree or "grid" in tree:
        load(path)
    else:
        load_config(path)


def _readme_data_commands() -> list[list[str]]:
    """The `--set` lists of the README's "Other data" commands for the main job."""
    import shlex

    text = (Path(__file__).parents[1] / "README.md").read_text().replace("\\\n", " ")
    cmds = [line.split("#")[0] for line in text.splitlines()
            if line.startswith("mmtx run experiments/cnn_vs_vit.yaml --set base.data.name=")]
    out = []
    for cmd in cmds:
        words = shlex.split(cmd)
        out.append([words[i + 1] for i, w in enumerate(words) if w == "--set"])
    return out


def test_readme_commands_that_switch_the_data_of_the_main_job(tmp_path):
    from PIL import Image

    from mmtx.train import load_config
    from mmtx.train.data import build_datasets

    commands = _readme_data_commands()
    assert {s.split("=")[1] for c in commands for s in c if s.startswith("base.data.name=")} \
        == {"cifar10", "image_folder"}
    for c, name in enumerate(("circle", "square")):  # root/<class>/*.png
        for i in range(12):
            (tmp_path / "images" / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (16, 16), (20 * i, 200 * c, 0)).save(
                tmp_path / "images" / name / f"{i}.png")
    for overrides in commands:
        overrides = [o.replace("path/to/folder", str(tmp_path / "images"))
                     .replace("~/data", str(tmp_path / "cifar")) for o in overrides
                     if o != "base.data.download=true"]  # offline here: no download
        exp = load_experiment(QUICK, overrides)
        cfg = load_config(grid.run_config(exp, exp.runs[0]))
        if cfg.data.name == "image_folder":
            data = build_datasets(cfg.data, 0)
            assert data["train"][0]["image"].shape[0] == 3 and data["train"].num_classes == 2
        else:  # the files are not there: the error says where to put them
            with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
                build_datasets(cfg.data, 0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigkill_of_the_experiment_kills_its_workers(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "mmtx", "run", str(QUICK), "--out",
                             str(tmp_path), "--set", "base.train.max_steps=400"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((tmp_path / "runs").glob("*/config.yaml"))) < 2:
            time.sleep(0.2)  # both workers have started their runs
        kids = descendants(proc.pid)
        assert len(kids) >= 2, "the experiment never started two workers"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 5  # the promise: none alive 5 s after the runner died
        while time.time() < deadline and any(alive(k) for k in kids):
            time.sleep(0.5)
        assert not [k for k in kids if alive(k)], "workers left running after SIGKILL"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_vision_language_quick_end_to_end(tmp_path, request):
    res = run_experiment(EXPERIMENTS / "vision_language_quick.yaml", tmp_path)
    by = {r["model"]: r for r in res["runs"]}
    # the NegCLIP trains first (the longest run), yet results keep the file's order
    assert [r["model"] for r in res["runs"]] == ["captioner", "clip", "negclip"]
    for r in by.values():
        for kind in ("swap_attributes", "swap_objects", "reverse_relation"):
            assert 0.0 <= r[f"foil_{kind}"] <= 1.0 and r[f"foil_{kind}_n"] > 0
    assert 0.0 <= by["captioner"]["exact"] <= 1.0
    assert 0.0 <= by["clip"]["image_to_text_R@1"] <= 1.0 and "zero_shot_shape" in by["negclip"]
    report = (tmp_path / "report.md").read_text()
    assert "| negclip | contrastive |" in report and "## Targets" in report
    assert "## Runs" in report and "| captioner | " in report.split("## Runs")[1]
    for name in ("foils.png", "attention_captioner.png", "results.json"):
        assert (tmp_path / name).stat().st_size > 0
    # the captioner alone measures exact captions: one curve, no pair to compare
    cap, clip = json.loads((tmp_path / "results.json").read_text())["compute_curves"]
    assert cap["title"] == "captioning: exact" and list(cap["curves"]) == ["captioner"]
    assert cap["curves"]["captioner"]["x"] == [32, 64] and not cap["crossovers"]
    assert "- captioning: exact (val/exact, higher is better):\n  - only captioner has a curve" \
        in report
    check_compute_curve(tmp_path, ["captioning: exact", "contrastive: image_to_text_R@1"])

    request.getfixturevalue("no_training")
    assert run_experiment(EXPERIMENTS / "vision_language_quick.yaml", tmp_path)["runs"] == \
        res["runs"]


@pytest.mark.parametrize("override, match", [
    ("eval.images=0", "eval.images: expected an int >= 1, got 0"),
    ("eval.examples=600", r"eval.examples \(600\) are drawn from the eval.images test scenes"),
])
def test_vision_language_eval_options_are_checked_before_training(tmp_path, override, match,
                                                                   no_training):
    with pytest.raises(ValueError, match=match):
        run_experiment(EXPERIMENTS / "vision_language_quick.yaml", tmp_path, [override])
    assert not (tmp_path / "runs").exists()


def test_a_run_killed_after_its_last_checkpoint_finishes_on_rerun(tmp_path):
    """Killed between the last checkpoint and result.json: the rerun resumes at the last step,
    trains nothing more, and still reports the run's throughput (over its steps)."""
    one = ["grid=[{model: [{name: convnet_small, label: cnn, args: {widths: [8, 16]}}]}]",
           "jobs=1", "base.train.checkpoint_every=3"]
    first = run_experiment(QUICK, tmp_path, one)["runs"][0]
    (tmp_path / "runs" / "cnn-shapes-f1-s0" / "result.json").unlink()  # as if killed there
    again = run_experiment(QUICK, tmp_path, one)["runs"][0]
    assert again["steps"] == first["steps"] == 6
    assert again["train_images_per_s"] == pytest.approx(first["train_images_per_s"])
    assert again["test_accuracy"] == first["test_accuracy"]
    assert "| cnn | shapes | 100% |" in (tmp_path / "report.md").read_text()
