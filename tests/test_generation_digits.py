"""Class-conditional generation on real data: gen_digits_quick.yaml (scikit-learn's digits at
16 px) trains end to end and is judged by the digits judge; `mmtx sample` names --class for a
digit that does not exist; digits the judge cannot read and a grid that cannot hold one row per
class are refused before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtx.cli import main as cli_main
from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

QUICK = Path(__file__).parents[1] / "experiments" / "gen_digits_quick.yaml"
FAST = ["train.max_steps=4", "train.eval_every=4", "train.log_every=2", "logging.progress=false",
        "task.args.sample_steps=2", "task.args.judge={epochs: 5}"]  # a judge in ~5 s


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, judge_cache):
    run_dir = tmp_path_factory.mktemp("gen_digits") / "run"
    torch.set_num_threads(1)
    return run_dir, train(QUICK, run_dir=run_dir, overrides=FAST)


def test_quick_digits_run_is_judged_by_the_digits_judge(digits_run, judge_cache):
    from PIL import Image

    run_dir, result = digits_run
    assert 0.0 <= result["val/cond_acc_class"] <= 1.0
    assert 0.9 <= result["val/cond_acc_class_ceiling"] <= 1.0  # the judge on real test digits
    assert result["val/cond_acc_images"] == 40
    assert result["val/fd_digits"] > 0 and result["val/fd_digits_floor"] > 0
    assert "val/fd_shapes" not in result
    (judge_file,) = (judge_cache / "judges").glob("*.safetensors")
    spec = json.loads((run_dir / "generation.json").read_text())
    assert spec["image_shape"] == [1, 16, 16] and spec["class_names"] == [str(d) for d in
                                                                           range(10)]
    assert spec["digits"] == {"image_size": 16, "normalize": "symmetric"}
    # one row per digit: 10 rows of grid_cols = 2 cells, 16 px + 2 px padding, drawn 2x
    assert Image.open(run_dir / "grid.png").size == (2 * (2 * 18 + 2), 2 * (10 * 18 + 2))


def test_a_finished_run_judges_fresh_samples_again(digits_run):
    from mmtx.eval.samples import read_generation_spec
    from mmtx.sample import load_generator

    run_dir, result = digits_run
    model, task, _ = load_generator(run_dir)  # the digits come back from generation.json
    again = task.judge_samples(model, 40, seed=1)  # the run's own evaluation noise
    assert again["cond_acc_class"] == result["val/cond_acc_class"]
    fresh = task.judge_samples(model, 30, seed=7, cfg_scale=1.0)
    assert 0.0 <= fresh["cond_acc_class"] <= 1.0 and fresh["cond_acc_images"] == 30
    assert fresh["fd_digits"] > 0 and task.main_metric == "fd_digits"
    spec = {"image_shape": [1, 16, 16], "num_classes": 10, "digits": {"image_size": 16}}
    with pytest.raises(ValueError, match="run.json: digits: expected null or an object with "
                                         "image_size, normalize"):
        read_generation_spec(spec, "run.json")


def test_mmtx_sample_names_the_class_argument_for_a_digit_out_of_range(digits_run, capsys):
    run_dir, _ = digits_run
    with pytest.raises(SystemExit) as exc:
        cli_main(["sample", str(run_dir), "--class", "12", "--n", "1", "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--class: unknown class '12'" in err and "0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in err


@pytest.mark.parametrize("override, match", [
    ("data.args.normalize=stats", "data.args.normalize: .*expected 'symmetric', got 'stats'"),
    ("task.args.grid=16", r"task.args.grid: with grid_rows_by_class, .* = 20, got 16"),
])
def test_bad_digits_runs_are_refused_before_training(tmp_path, judge_cache, override, match):
    with pytest.raises(ValueError, match=match):
        train(QUICK, run_dir=tmp_path / "run", overrides=[*FAST, override])
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_digits_upscaled_once_and_symmetric_range_match_the_transforms():
    from mmtx.data import DigitsDataset, build_dataset, build_transforms

    small, big = DigitsDataset("val"), DigitsDataset("val", image_size=16, normalize="symmetric")
    assert big[0]["image"].shape == (1, 16, 16) and big.image_size == 16
    raw = small.images[:5]  # (5, 1, 8, 8) in [0, 1]
    resize = build_transforms("digits", "none", 16, train=False, mean=(0.5,), std=(0.5,))
    expected = torch.stack([resize(x) for x in raw])  # torchvision's Resize, then [-1, 1]
    got = torch.stack([big[i]["image"] for i in range(5)])
    torch.testing.assert_close(got, expected.clamp(-1, 1), atol=1e-5, rtol=0)
    built = build_dataset("digits", "val", image_size=16)  # the classifiers' path: stats
    torch.testing.assert_close(built[0]["image"],
                               build_transforms("digits", "none", 16, train=False)(raw[0]),
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="normalize: expected one of stats, symmetric"):
        DigitsDataset(normalize="minmax")
    with pytest.raises(ValueError, match="image_size: expected an int >= 1"):
        DigitsDataset(image_size=0)
