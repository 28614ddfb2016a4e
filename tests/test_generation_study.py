"""The generation study kind end to end (generation_study_quick.yaml), its checks, and the
measures it adds: held-out colour-shape combinations, text-to-image composition on real scenes,
and the U-Net's receptive field walked in forward order."""

import json
from pathlib import Path

import pytest
import torch
from curve_checks import check_compute_curve

from mmtx import create_model
from mmtx.data import ShapesDataset
from mmtx.eval.composition import composition, summarize
from mmtx.experiments import run_experiment
from mmtx.experiments.registry import load
from mmtx.models.receptive_field import receptive_field

pytestmark = pytest.mark.usefixtures("single_thread")

QUICK = Path(__file__).parents[1] / "experiments" / "generation_study_quick.yaml"
FULL = Path(__file__).parents[1] / "experiments" / "generation_study.yaml"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, judge_cache):
    out = tmp_path_factory.mktemp("generation_study")
    return out, run_experiment(QUICK, out_dir=out)


def test_quick_study_writes_report_results_grids_and_plots(finished):
    out, res = finished
    for name in ("report.md", "results.json", "fd_vs_step.png", "cfg_sweep.png"):
        assert (out / name).stat().st_size > 0, name
    for meas in ("class", "consistency", "text"):
        for label in ("cnn", "dit", "hybrid"):
            assert (out / "grids" / f"{meas}_{label}.png").stat().st_size > 0
    results = json.loads((out / "results.json").read_text())
    runs = {(r["measurement"], r["model"]): r for r in results["runs"]}
    assert sorted(runs) == sorted((m, k) for m in ("class", "consistency", "text")
                                  for k in ("cnn", "dit", "hybrid"))
    for r in runs.values():  # same steps for every run; each an engine run dir
        assert r["steps"] == 4 and r["params"] > 0 and r["flops"] > 0
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
    for label in ("cnn", "dit", "hybrid"):
        c = runs[("class", label)]
        assert set(c["sweep"]) == {"1", "3"}  # the sweep includes the task's scale, 3
        d = c["at_default"]
        for key in ("fd_shapes", "fd_shapes_floor", "cond_acc_shape", "cond_acc_colour",
                    "sample_s_per_image"):
            assert key in d, key
        assert c["fd_curve"] and [p["step"] for p in c["fd_curve"]] == [2, 4]
        k = runs[("consistency", label)]
        assert 0.0 <= k["consistency"] <= 1.0 and k["images"] == 16
        t = runs[("text", label)]
        for group in ("seen", "unseen", "seen_real", "unseen_real"):
            assert t[group]["images"] == 8
            assert set(t[group]) >= {"shape", "colour", "size", "relation", "prompt"}
        assert len(t["grid_prompts"]) == 8
    # every model is asked the same prompts: the measure on their real images is the same
    assert runs[("text", "cnn")]["seen_real"] == runs[("text", "dit")]["seen_real"]
    assert runs[("text", "cnn")]["unseen_real"] == runs[("text", "hybrid")]["unseen_real"]
    # the CNN's field: channels [4, 8, 8] -> 3 + 4 + 4 + 8 + 8 (+ 8 mid) ... = 83 px; the DiT
    # has none (attention), the hybrid's convolutions walk the same path
    assert runs[("consistency", "cnn")]["receptive_field"] == 83
    assert runs[("consistency", "dit")]["receptive_field"] is None
    assert results["flops"]["class"]["dit"] == runs[("class", "dit")]["flops"]
    report = (out / "report.md").read_text()
    for text in ("| cnn (cnn) |", "MFLOPs per image forward", "## What held", "## Target",
                 "dit cond_acc shape", "MISSED by", "receptive field is 83 px",
                 "![fd_vs_step.png]", "grids/text_hybrid.png"):
        assert text in report, text


def test_quick_study_draws_its_compute_curve(finished):
    out, res = finished
    panels = check_compute_curve(out, ["class: cond_acc_shape", "consistency: consistency",
                                       "text: cond_acc_shape"])
    flops = json.loads((out / "results.json").read_text())["flops"]
    for meas, panel in zip(("class", "consistency", "text"), panels):
        # evaluated at steps 2 and 4 of 16 images; FLOPs per image as checked before training
        assert {k: c["x"] for k, c in panel["curves"].items()} == {
            m: [32, 64] for m in ("cnn", "dit", "hybrid")}
        assert panel["flops_per_image"] == flops[meas]


def test_second_run_reads_every_run_back(finished, monkeypatch):
    out, res = finished
    monkeypatch.setattr("mmtx.train.train", lambda *a, **k: pytest.fail("trained again"))
    assert run_experiment(QUICK, out_dir=out)["runs"] == res["runs"]


def test_an_edited_file_does_not_read_back_runs_trained_otherwise(finished, monkeypatch):
    out, _ = finished
    monkeypatch.setattr("mmtx.train.train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=r"runs/class-cnn holds a finished run trained with "
                       r"other settings \(train.max_steps 4 -> 6\); delete that directory"):
        run_experiment(QUICK, out_dir=out, overrides=["base.train.max_steps=6"])
    # logging is not what a run is: another W&B project reads every run back
    assert run_experiment(QUICK, out_dir=out, overrides=["base.logging.project=other"])


def test_a_null_measurement_is_left_out(tmp_path):
    res = run_experiment(QUICK, out_dir=tmp_path, overrides=["measurements.consistency=null",
                                                             "measurements.text=null"])
    assert [(r["measurement"], r["model"]) for r in res["runs"]] == [
        ("class", "cnn"), ("class", "dit"), ("class", "hybrid")]
    assert "## Target" in (tmp_path / "report.md").read_text()
    # a finished run whose settings cannot be read any more is named, not read back blindly
    saved = tmp_path / "runs" / "class-dit" / "config.yaml"
    saved.write_text(saved.read_text() + "retired_section: {}\n")
    with pytest.raises(ValueError, match=r"class-dit holds a finished run whose config.yaml "
                                         r"cannot be read \(.*retired_section"):
        run_experiment(QUICK, out_dir=tmp_path, overrides=["measurements.consistency=null",
                                                           "measurements.text=null"])


@pytest.mark.parametrize("override, match", [
    ("models=[]", "'models' must list"),
    ("models=[{label: a, name: unet_small}]", "each model needs label, role and name"),
    ("models=[{label: a, role: cnn, name: unet_small, lr: 1}]",
     r"unknown key 'lr' for model 'a'; valid: label, role, name, args"),
    ("models=[{label: a, role: vit, name: unet_small}]", "role must be one of cnn, dit, hybrid"),
    ("measurements.colour={}", "measurements must name some of class, consistency, text"),
    ("measurements.text=3", r"measurements.text: expected a mapping of data / task / "
                            r"model_args \(null leaves it out\), got 3"),
    ("measurements={class: null, consistency: null, text: null}",
     r"measurements must name some of class, consistency, text, got \[\]"),
    ("measurements.consistency.data.args.task=relation",
     "measurements.consistency: data.args.task must be 'twins', got 'relation'"),
    ("measurements.text.task.args.cond=class", "task.args.cond must be 'caption'"),
    ("models.1.args.dim=256", r"not FLOP-matched on 'class': cnn 4.4, dit .*allowed 1.20"),
    ("holdout=[red starr]", "exclude: expected 'colour shape' names"),
    ("eval.cfg_scales=[1.0, .nan]", r"eval.cfg_scales: expected a finite number >= 0 .* nan"),
    ("eval.grid=0", r"eval.grid: expected an int >= 1"),
    ("text_target=0.5", "config key 'text_target': expected a mapping, got 0.5"),
    ("text_target={sen: 0.5}", r"unknown key 'sen' for text_target; did you mean seen, unseen\?"),
    ("text_target={seen: 50}", r"text_target.seen: expected a fraction in \[0, 1\], got 50"),
    ("draw_threshold=.nan", r"draw_threshold: expected a fraction in \[0, 1\], got nan"),
])
def test_bad_specs_fail_before_training(tmp_path, override, match, monkeypatch):
    monkeypatch.setattr("mmtx.train.train", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError, match=match):
        run_experiment(QUICK, out_dir=tmp_path, overrides=[override])


def _row(label, role, shape, consistency=None, prompt=None):
    row = {"model": label, "role": role, "shape": shape, "colour": 1.0, "fd": 50.0}
    if consistency is not None:
        row.update(consistency=consistency, consistency_real=1.0, receptive_field=83)
    if prompt is not None:
        row["text"] = {g: {"prompt": p, "shape": 0.9, "colour": 1.0}
                       for g, p in zip(("seen", "unseen"), prompt)}
    return row


def test_targets_compare_the_dit_with_the_cnn_and_the_text_targets():
    from mmtx.experiments.generation_report import target_lines

    _, spec = load(FULL)
    lines = target_lines(spec, [_row("cnn", "cnn", 0.97), _row("dit", "dit", 0.95,
                                                                 prompt=(0.55, 0.2))])
    assert lines == [
        "- dit cond_acc shape: 95.0% vs target 90%: met.",
        "- dit cond_acc colour: 100.0% vs target 90%: met.",
        "- dit cond_acc shape at least the CNN's (cnn, same FLOPs per image and steps): "
        "95.0% vs 97.0%: MISSED by 2.0 points.",
        "- dit whole prompt right, seen combinations: 55.0% vs target 50%: met.",
        "- dit whole prompt right, unseen combinations: 20.0% vs target 25%: MISSED by 5.0 points."]


def test_consistency_is_compared_only_between_models_that_draw_shapes():
    from mmtx.experiments.generation_report import verdict

    _, spec = load(FULL)  # draw_threshold 0.8
    results = [{"measurement": "consistency", "image_size": 32}]
    drawn = verdict(spec, [_row("cnn", "cnn", 0.85, 0.10), _row("dit", "dit", 0.95, 0.60)],
                    results)[0]
    assert "(dit vs the CNN): held: 60.0% vs 10.0%" in drawn
    blobs = verdict(spec, [_row("cnn", "cnn", 0.5, 0.10), _row("dit", "dit", 0.95, 0.60)],
                    results)[0]
    assert ("not read as a comparison (cnn draws the asked shape in 50.0% of its class "
            "samples, below the 80% at which its objects are shapes)") in blobs
    assert "60.0% vs 10.0%" in blobs  # the numbers are still printed


def test_full_study_is_flop_matched_and_reads_as_its_kind():
    from mmtx.experiments.generation_study import check_flops

    kind, spec = load(FULL)
    assert kind.name == "generation_study" and spec.jobs == 2
    assert {m["role"] for m in spec.models} == {"cnn", "dit", "hybrid"}
    for meas in spec.measurements:
        flops = check_flops(spec, meas)
        assert max(flops.values()) / min(flops.values()) <= 1 + spec.flop_tolerance, \
            (meas, flops)


def test_held_out_combinations_never_drawn_and_other_scenes_unchanged():
    held = ["red star", "blue triangle"]
    ds = ShapesDataset(400, task="shape", num_objects=[1, 2], exclude=held)
    plain = ShapesDataset(400, task="shape", num_objects=[1, 2])
    drawn = {(o.colour, o.shape) for i in range(400) for o in ds.scene(i)}
    assert not drawn & {("red", "star"), ("blue", "triangle")}
    assert ("red", "circle") in drawn and ("blue", "star") in drawn  # only the pairs are gone
    # scenes without a held-out combination are the plain dataset's, pixel for pixel
    same = [i for i in range(400) if not any((o.colour, o.shape) in {("red", "star"),
            ("blue", "triangle")} for o in plain.scene(i))]
    assert len(same) > 300
    assert all(torch.equal(ds[i]["image"], plain[i]["image"]) for i in same[:50])
    with pytest.raises(ValueError, match="exclude: expected 'colour shape' names"):
        ShapesDataset(4, exclude=["red"])
    with pytest.raises(ValueError, match="exclude: expected a list"):
        ShapesDataset(4, exclude="red star")


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    from mmtx.eval.judge import load_judge

    # the real one-object judge (about 20 s once; 100% on real one-object scenes)
    return load_judge(None, cache_dir=tmp_path_factory.mktemp("judges"), progress=False)


def test_composition_reads_real_scenes_right_and_shuffled_prompts_near_chance(judge):
    ds = ShapesDataset(300, split="test", task="shape", num_objects=[1, 2])
    images = torch.stack([ds[i]["image"] for i in range(len(ds))])
    scenes = [ds[i]["attributes"]["objects"] for i in range(len(ds))]
    one = [i for i, s in enumerate(scenes) if len(s) == 1]
    two = [i for i, s in enumerate(scenes) if len(s) == 2]
    scores = composition(judge, images, scenes)
    lone, pairs = summarize(scores, one), summarize(scores, two)
    assert lone["prompt"] >= 0.98 and lone["images"] == len(one)
    assert pairs["shape"] >= 0.98 and pairs["colour"] >= 0.98 and pairs["relation"] >= 0.95
    assert pairs["size"] >= 0.85  # sizes of two-object scenes are the weakest reading
    # each image against another scene's prompt: near chance
    shuffled = summarize(composition(judge, images.roll(1, 0), scenes))
    assert shuffled["shape"] < 0.3 and shuffled["colour"] < 0.3 and shuffled["prompt"] < 0.05
    # a blank image has no objects: every two-object prompt is wrong
    blank = composition(judge, torch.full((1, 3, 32, 32), -1.0), [scenes[two[0]]])
    assert blank["prompt"].item() == 0.0 and blank["relation"].item() == 0.0


def test_composition_checks_its_input(judge):
    obj = {"shape": "circle", "colour": "red", "size": "small", "x": 5.0, "y": 5.0}
    with pytest.raises(ValueError, match=r"images: expected a tensor \(N, C, H, W\)"):
        composition(judge, torch.zeros(3, 32, 32), [[obj]])
    with pytest.raises(ValueError, match=r"scenes: expected one per image \(2\), got 1"):
        composition(judge, torch.zeros(2, 3, 32, 32), [[obj]])
    with pytest.raises(ValueError, match=r"scenes\[0\]: expected 1 or 2 objects, got 3"):
        composition(judge, torch.zeros(1, 3, 32, 32), [[obj] * 3])
    with pytest.raises(ValueError, match=r"missing \['x', 'y'\]"):
        composition(judge, torch.zeros(1, 3, 32, 32), [[{"shape": "circle", "colour": "red",
                                                         "size": "small"}]])


def test_unet_receptive_field_follows_the_forward_pass():
    x, t = torch.randn(1, 3, 32, 32), torch.rand(1)
    # stem 3; level 0: 5, 7; down 9 (jump 2); level 1: 13, 17; down 21 (jump 4); level 2:
    # 29, 37; middle 45, 53; up level 2: 61, 69; x2 (jump 2): 73, 77; x2 (jump 1): 79, 81;
    # output conv 83
    unet = create_model("unet_small", channels=(12, 24, 32), groups=4)
    assert receptive_field(unet, skip=("skip",), example=(x, t)) == 83
    # one down-sampling: 3, 5, 7, 9 (jump 2), 13, 17 | mid 21, 25 | 29, 33 | x2: 35, 37 | 39
    assert receptive_field(create_model("unet_small", channels=(16, 32)), skip=("skip",),
                           example=(x, t)) == 39
    # registration order puts the down-sampling convolutions after every stage: wrong for it
    assert receptive_field(unet, skip=("skip",)) != 83
    with pytest.raises(ValueError, match="example: expected a tuple of forward arguments"):
        receptive_field(unet, example=x)
