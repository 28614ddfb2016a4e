"""Bad input and faults of `mmtx sample` and of the generation task's options, tried as a user
would: real run directories, damaged files, `python -m mmtx` in its own process. Each error is
one line naming the option, file or key at fault, and comes before anything is sampled."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import test_disk_faults
import torch

from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")
mount = test_disk_faults.mount  # the fixture: mount(size, readonly=False) -> a tmpfs folder

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "gen_class_quick.yaml"
TINY = ["train.max_steps=2", "train.eval_every=2", "train.ema=null", "data.val_split=null",
        "data.args.image_size=16", "data.args.num_samples=64", "data.batch_size=16",
        "task.args.grid=4", "task.args.eval_samples=0", "task.args.sample_steps=2",
        "task.args.judge=false", "logging.progress=false"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, judge_cache):
    run_dir = tmp_path_factory.mktemp("sample") / "run"
    train(QUICK, run_dir=run_dir, overrides=TINY)
    return run_dir


def mmtx(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtx", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
                               **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """The one error line of a command that failed without a traceback, holding `words`
    (the exit status is checked by the caller when the command ran under a shell)."""
    assert proc.returncode != 0 or proc.args[0] == "unshare", proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints"))
    return dest


@pytest.mark.parametrize("scale", ["nan", "inf"])
def test_a_guidance_scale_that_is_not_a_finite_number_is_refused(run_dir, tmp_path, scale):
    if scale == "nan":  # the command, in its own process
        proc = mmtx("sample", run_dir, "--cfg", scale, "--out", tmp_path / "g.png")
        assert proc.returncode == 2
        one_line_error(proc, "--cfg", "finite number >= 0", "nan")
    else:
        from mmtx.sample import sample_command

        with pytest.raises(ValueError, match=r"--cfg: expected a finite number >= 0.*inf"):
            sample_command(run_dir, n=1, steps=1, cfg_scale=float(scale), out=tmp_path / "g.png")
    assert not (tmp_path / "g.png").exists()  # nothing sampled, nothing written


@pytest.mark.parametrize("option, match", [
    ({"seed": 10**23}, r"--seed: expected an int in \[-2\*\*63, 2\*\*64\)"),
    ({"sampler": "ddim"}, r"--sampler 'ddim': sampler 'ddim' needs a DDPM objective, got Flow"),
    ({"out_dir": "file.png"}, r"--out-dir '.*/file.png': '.*/file.png' is a file; expected"),
])
def test_bad_seed_sampler_and_output_folder_are_named_before_sampling(run_dir, tmp_path, option,
                                                                       match, monkeypatch):
    from mmtx.sample import sample_command

    (tmp_path / "file.png").write_bytes(b"")
    monkeypatch.setattr("mmtx.diffusion.sampling.sample",
                        lambda *a, **k: pytest.fail("sampled"))
    if "out_dir" in option:
        option = {"out_dir": tmp_path / option["out_dir"]}
    with pytest.raises(ValueError, match=match):
        sample_command(run_dir, n=2, steps=1, out=tmp_path / "g.png", **option)
    assert not (tmp_path / "g.png").exists()


def test_a_guidance_scale_in_a_config_that_is_not_a_number_names_the_key(tmp_path):
    proc = mmtx("train", QUICK, "--run-dir", tmp_path / "run", "--set", "task.args.cfg_scale=nan",
                "--set", "logging.progress=false")
    one_line_error(proc, "task.args.cfg_scale", "finite number", "'nan'")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before training


def test_more_images_than_memory_holds_are_refused_naming_the_limit(run_dir, tmp_path):
    proc = mmtx("sample", run_dir, "--n", "100000000", "--out", tmp_path / "g.png")
    line = one_line_error(proc, "--n: 100,000,000 images", "GiB of memory available", "at most")
    assert "286.1 GiB" in line  # 1e8 x 3 x 16 x 16 float32
    assert not (tmp_path / "g.png").exists()


def test_a_grid_larger_than_pil_can_open_is_refused_before_sampling():
    from PIL import Image

    from mmtx.viz.grids import check_grid, grid_size, save_grid

    check_grid(1000, (3, 16, 16))  # 32 x 32 cells of 18 px, drawn 2x: 1,156 px square
    _, _, h, w = grid_size(400_000, (3, 16, 16))
    assert h * w > Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"--n: a grid of 400,000 images .* more than PIL's "
                                         r"limit of 89,478,485"):
        check_grid(400_000, (3, 16, 16), what="--n")
    with pytest.raises(ValueError, match=r"cols: expected an int >= 1.*-2"):
        check_grid(4, (3, 16, 16), cols=-2)
    with pytest.raises(ValueError, match=r"images must be \(N >= 1, 1 or 3, H, W\), got shape "
                                         r"\(0, 3, 16, 16\)"):
        save_grid(torch.zeros(0, 3, 16, 16), "unused.png")


def test_images_are_sampled_in_chunks_with_a_progress_bar_and_the_same_noise(run_dir, tmp_path):
    """The run's sample_batch_size set to 4: 10 images come in three chunks, with a bar over
    the images, and are the images one chunk gives from the same seed."""
    import yaml

    from mmtx.sample import load_generator

    chunked = copy_run(run_dir, tmp_path / "chunked")
    config = yaml.safe_load((chunked / "config.yaml").read_text())
    config["task"]["args"]["sample_batch_size"] = 4
    (chunked / "config.yaml").write_text(yaml.safe_dump(config))
    proc = mmtx("sample", chunked, "--n", 10, "--steps", 2, "--out", tmp_path / "g.png",
                "--out-dir", tmp_path / "each")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "10/10" in proc.stderr  # the bar over the images
    model, task, _ = load_generator(chunked)
    assert task.sample_batch_size == 4
    cond, _ = task.conditions(10)
    chunks = task.sample_images(model, cond, 10, seed=0, steps=2, cfg_scale=2.0)
    task.sample_batch_size = 256
    whole = task.sample_images(model, cond, 10, seed=0, steps=2, cfg_scale=2.0)
    # The same starting noise; only float rounding differs between batch sizes (another
    # noise would differ by ~1).
    torch.testing.assert_close(chunks, whole, rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "each").glob("*.png"))) == 10


def test_evaluation_samples_and_grid_that_cannot_fit_are_refused_at_setup():
    from mmtx.data import ShapesDataset
    from mmtx.train.tasks import create_task

    data = ShapesDataset(4, image_size=16, task="shape_colour")
    create_task("generation", eval_samples=64, grid=16).setup(data)
    with pytest.raises(ValueError, match=r"task.args.eval_samples: 1,000,000,000,000 images of "
                                         r"shape \(3, 16, 16\) need .* GiB"):
        create_task("generation", eval_samples=10**12).setup(data)
    with pytest.raises(ValueError, match=r"task.args.grid: a grid of 400,000 images"):
        create_task("generation", grid=400_000).setup(data)


def _edit_spec(run: Path, change) -> None:
    spec = json.loads((run / "generation.json").read_text())
    (run / "generation.json").write_text(json.dumps(change(spec)))


@pytest.mark.parametrize("fault, words", [
    ("empty", ["generation.json: no 'image_shape'"]),
    ("classes", ["generation.json: num_classes 5 does not fit the model", "num_classes=48",
                 "model.json"]),
])
def test_a_generation_json_that_does_not_fit_is_one_line_naming_file_and_key(
        run_dir, tmp_path, fault, words):
    run = copy_run(run_dir, tmp_path / "run")
    if fault == "empty":
        (run / "generation.json").write_text("{}")
    else:
        _edit_spec(run, lambda s: {**s, "num_classes": 5, "class_names": s["class_names"][:5]})
    one_line_error(mmtx("sample", run, "--out", tmp_path / "g.png"), str(run), *words)
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("change, match", [
    (lambda s: {**s, "image_shape": [3, 32, 32]},
     r"generation.json: image_shape \[3, 32, 32\] does not fit the model, built with img_size=16"),
    (lambda s: {**s, "image_shape": [3, 16]},
     r"generation.json: image_shape: expected \[C, H, W\]"),
    (lambda s: {**s, "class_names": ["a"]}, r"generation.json: class_names: expected a list of 48"),
    (lambda s: {**s, "shapes": {**s["shapes"], "colour": 1}}, r"generation.json: shapes:"),
    (lambda s: [s], r"generation.json: expected a JSON object"),
])
def test_a_malformed_generation_json_names_the_key(run_dir, tmp_path, change, match):
    from mmtx.sample import load_generator

    run = copy_run(run_dir, tmp_path / "run")
    _edit_spec(run, change)
    with pytest.raises(ValueError, match=match):
        load_generator(run)
    (run / "generation.json").write_text('{"image_shape": [3, 16')
    with pytest.raises(ValueError, match=r"generation.json: not valid JSON"):
        load_generator(run)


def test_a_vae_folder_without_weights_is_one_line_naming_it(run_dir, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2,
                                  block_out_channels=(8, 16), layers_per_block=1,
                                  norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    for weights in (tmp_path / "vae").glob("diffusion_pytorch_model*"):
        weights.unlink()
    one_line_error(mmtx("sample", run_dir, "--vae", tmp_path / "vae", "--out", tmp_path / "g.png"),
                   "vae:", str(tmp_path / "vae"), "no weights")


def test_bad_objective_and_grid_options_name_their_key_at_construction():
    from mmtx.train.tasks import create_task

    cases = [({"objective": "foo", "prediction": "x0"}, r"task.args.objective: expected one of"),
             ({"objective_args": {"loc": float("nan")}},
              r"task.args.objective_args: loc must be a finite number, got nan"),
             ({"objective_args": {"loc": "nan"}}, r"task.args.objective_args: loc .* 'nan'"),
             ({"objective_args": {"scale": float("inf")}}, r"objective_args: scale must be a fin"),
             ({"grid_cols": -2}, r"task.args.grid_cols: expected an int >= 1"),
             ({"cond_drop": "nan"}, r"task.args.cond_drop: expected a finite number"),
             ({"sample_shift": 0}, r"task.args.sampler / sample_shift: shift must be > 0"),
             ({"cfg_scale": float("inf")}, r"task.args.cfg_scale: expected a finite number")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            create_task("generation", **args)


def test_a_damaged_model_file_is_one_line_naming_it(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a full disk or a copy
    one_line_error(mmtx("sample", run, "--out", tmp_path / "g.png"), str(weights))
    assert not (tmp_path / "g.png").exists()


def test_a_read_only_output_folder_is_refused_before_sampling(run_dir, mount):
    folder = mount("256k", readonly=True)
    proc = mmtx("sample", run_dir, "--n", 2, "--steps", 1, "--out", folder / "grid.png")
    assert proc.returncode == 2
    one_line_error(proc, "--out", f"{folder}/grid.png", "Read-only file system")


def test_a_full_disk_leaves_no_half_written_png(run_dir, mount):
    folder = mount("256k")
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    proc = mmtx("sample", run_dir, "--n", 4, "--steps", 1, "--out", folder / "grid.png",
                "--out-dir", folder / "each")
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.splitlines() if x.startswith("mmtx sample:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"{folder}/grid.png" in lines[0] and "No space left" in lines[0]
    assert sorted(p.name for p in folder.iterdir()) == ["each", "filler"]  # no PNG, no temp
