"""The generation task end to end: a tiny DiT trained through mmtx.train.train writes sample
grids and judged metrics; fixed noise gives the same grid twice; `mmtx sample` on the run;
clear errors for bad input; the shape_colour data task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtx.cli import main as cli_main
from mmtx.data import ShapesDataset
from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

QUICK = Path(__file__).parents[1] / "experiments" / "gen_class_quick.yaml"
# A judge that trains in about a second: the metrics are computed, not meaningful.
TINY_JUDGE = "task.args.judge={train_samples: 256, test_samples: 128, epochs: 1, batch_size: 64}"
TINY = ["train.max_steps=4", "train.eval_every=2", "train.log_every=2", "train.ema=0.9",
        "data.args.image_size=16", "data.args.num_samples=128", "data.batch_size=16",
        "task.args.grid=4", "task.args.eval_samples=16", "task.args.sample_steps=2",
        "logging.progress=false", TINY_JUDGE]


@pytest.fixture(scope="module")
def class_run(tmp_path_factory, judge_cache):
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    torch.set_num_threads(1)
    result = train(QUICK, run_dir=run_dir, overrides=TINY)
    return run_dir, result


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_training_writes_grids_and_judged_metrics(class_run, judge_cache):
    run_dir, result = class_run
    for name in ("grid.png", "grid_step_00000002.png", "grid_step_00000004.png",
                 "model.safetensors", "generation.json"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "grid.png").read_bytes() == (run_dir / "grid_step_00000004.png").read_bytes()
    evals = [m for m in _metrics(run_dir) if "val/fd_shapes" in m]
    assert [m["step"] for m in evals] == [2, 4]
    for key in ("fd_shapes", "fd_shapes_floor", "cond_acc_shape", "cond_acc_colour",
                "cond_acc_shape_ceiling", "cond_acc_colour_ceiling", "sample_s_per_image"):
        assert f"val/{key}" in evals[-1], key
        assert f"val/{key}" in result
    assert 0.0 <= result["val/cond_acc_shape"] <= 1.0 and result["val/fd_shapes"] > 0
    assert result["val/cond_acc_images"] == 16
    assert len(list((judge_cache / "judges").glob("*.safetensors"))) == 1  # trained once


def test_grids_from_the_same_weights_are_identical(class_run, tmp_path):
    from mmtx.sample import load_generator

    run_dir, _ = class_run
    model, task, _ = load_generator(run_dir)

    class Log:
        shown = []

        def log_examples(self, name, examples, step):
            self.shown.append((name, step))

    log = Log()
    a = task.eval_whole_model(model, "val", 10, tmp_path, log)
    b = task.eval_whole_model(model, "val", 11, tmp_path, log)
    first = (tmp_path / "grid_step_00000010.png").read_bytes()
    assert first == (tmp_path / "grid_step_00000011.png").read_bytes()
    assert a["cond_acc_shape"] == b["cond_acc_shape"] and a["fd_shapes"] == b["fd_shapes"]
    assert log.shown == [("val/samples", 10), ("val/samples", 11)]


def test_mmtx_sample_writes_the_grid_and_one_png_per_image(class_run, tmp_path, capsys):
    from PIL import Image

    run_dir, _ = class_run
    out, out_dir = tmp_path / "grid.png", tmp_path / "each"
    cli_main(["sample", str(run_dir), "--class", "red circle", "--class", "blue star",
              "--n", "4", "--steps", "2", "--out", str(out), "--out-dir", str(out_dir)])
    assert Image.open(out).size == (2 * (2 * (16 + 2) + 2),) * 2  # 2 x 2 cells, scale 2
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["000_red_circle.png", "001_blue_star.png", "002_red_circle.png",
                     "003_blue_star.png"]
    assert Image.open(out_dir / names[0]).size == (16, 16)
    assert "grid of 4 images" in capsys.readouterr().out


def test_mmtx_sample_rejects_an_unknown_class_naming_the_valid_ones(class_run, capsys):
    run_dir, _ = class_run
    with pytest.raises(SystemExit) as exc:
        cli_main(["sample", str(run_dir), "--class", "red blob", "--n", "1", "--steps", "1"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown class 'red blob'" in err and "red circle" in err and "white cross" in err
    with pytest.raises(SystemExit):
        cli_main(["sample", str(run_dir), "--prompt", "a red circle", "--n", "1"])
    assert "conditioned on 'class', not on a caption" in capsys.readouterr().err


def test_unconditional_twins_run_reports_consistency(tmp_path, judge_cache):
    result = train(QUICK, run_dir=tmp_path / "twins", overrides=[
        *TINY, "data.args.task=twins", "task.args.cond=none", "task.args.cfg_scale=1.0"])
    for key in ("consistency", "consistency_ceiling"):
        assert 0.0 <= result[f"val/{key}"] <= 1.0, key
    assert "val/cond_acc_shape" not in result  # nothing was asked of the samples


def test_caption_run_samples_prompts_and_rejects_unknown_words(tmp_path, judge_cache, capsys):
    run_dir = tmp_path / "text"
    train(QUICK, run_dir=run_dir, overrides=[
        "train.max_steps=2", "train.ema=null", "data.val_split=null", "data.args.image_size=16",
        "data.args.num_samples=64", "data.args.task=shape", "data.args.num_objects=[1, 2]",
        "data.batch_size=16", "task.args.cond=caption", "model.args.text_dim=32",
        "model.args.text_depth=1", "model.args.text_heads=2", "logging.progress=false"])
    assert (run_dir / "tokenizer.json").is_file()
    out = tmp_path / "caption.png"
    cli_main(["sample", str(run_dir), "--prompt", "a large green triangle", "--n", "2",
              "--steps", "2", "--out", str(out)])
    assert out.is_file()
    with pytest.raises(SystemExit):
        cli_main(["sample", str(run_dir), "--prompt", "a large green blob", "--n", "1"])
    err = capsys.readouterr().err
    assert "['blob'] not in the vocabulary" in err and "triangle" in err
    with pytest.raises(SystemExit):
        cli_main(["sample", str(run_dir), "--class", "red circle", "--n", "1"])
    assert "not on a class" in capsys.readouterr().err


def test_image_size_not_divisible_by_the_patch_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"img_size \(18, 18\) must be divisible by patch_size"):
        train(QUICK, run_dir=tmp_path / "bad", overrides=[
            "data.args.image_size=18", "data.args.num_samples=32", "logging.progress=false"])


def test_bad_task_args_are_clear_errors():
    from mmtx.train.tasks import create_task

    with pytest.raises(ValueError, match="cond: expected one of class, caption, none"):
        create_task("generation", cond="label")
    with pytest.raises(ValueError, match="needs a DDPM objective"):
        create_task("generation", objective="flow", sampler="ddim")
    with pytest.raises(ValueError, match="timestep_sampling applies to objective 'flow'"):
        create_task("generation", objective="ddpm", timestep_sampling="uniform")
    with pytest.raises(ValueError, match="prediction 'x0' applies to objective 'flow'"):
        create_task("generation", objective="ddpm", prediction="x0")


def test_x0_prediction_is_read_as_the_velocity_of_the_flow():
    from mmtx.train.tasks import create_task

    task = create_task("generation", prediction="x0", judge=False)
    x0 = torch.randn(3, 3, 4, 4)
    noise = torch.randn(3, 3, 4, 4)
    t = torch.tensor([0.01, 0.5, 1.0])
    x_t = task.objective.interpolate(x0, noise, t)
    perfect = task.model_fn(lambda x, tt: x0)(x_t, t, None)  # a network that knows x0
    torch.testing.assert_close(perfect[1:], (noise - x0)[1:])  # exactly the true velocity
    torch.testing.assert_close(perfect[0], (x_t[0] - x0[0]) / 0.05)  # t clamped at 0.05


def test_ddpm_objective_trains_and_samples_with_ddim(tmp_path):
    """The DDPM path of the task without the engine: a step, then judged-free sampling."""
    from mmtx.data import collate
    from mmtx.models import create_model
    from mmtx.train.tasks import create_task

    task = create_task("generation", objective="ddpm", objective_args={"num_steps": 50},
                       sampler="ddim", sample_steps=3, grid=4, eval_samples=4, judge=False)
    ds = ShapesDataset(8, image_size=16, task="shape_colour")
    task.setup(ds)
    torch.manual_seed(0)
    model = create_model("dit_micro_4", dim=32, depth=1, num_heads=2,
                         **task.model_kwargs(ds))
    loss, metrics = task.step(model, collate([ds[i] for i in range(8)]))
    loss.backward()
    assert torch.isfinite(loss) and "loss" in metrics
    model.eval()
    out = task.eval_whole_model(model, "val", 1, tmp_path, type("L", (), {
        "log_examples": lambda *a: None})())
    assert set(out) == {"sample_s_per_image"} and (tmp_path / "grid.png").is_file()


def test_shape_colour_task_labels_every_shape_and_colour_pair():
    ds = ShapesDataset(300, task="shape_colour", split="val")
    assert ds.num_classes == 48 and ds.class_names[0] == "red circle"
    assert ds.class_names[-1] == "white cross"
    for i in range(50):
        item = ds[i]
        obj = item["attributes"]["objects"][0]
        assert ds.class_names[item["label"]] == f"{obj['colour']} {obj['shape']}"
        assert item["caption"] == f"a {obj['size']} {obj['colour']} {obj['shape']}"
    assert len(set(ds.labels)) == 48
    # The same scenes as the shape task: only the label differs.
    shape = ShapesDataset(300, task="shape", split="val")
    assert torch.equal(shape[7]["image"], ds[7]["image"])
    assert shape[7]["label"] == ds[7]["label"] // 8
    assert ShapesDataset(10, task="shape_color").task == "shape_colour"


def _tiny_vae(path: Path) -> Path:
    """A random diffusers AutoencoderKL (16 px -> 4 x 8 x 8 latents) saved as a folder."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        layers_per_block=1, norm_num_groups=4, sample_size=16,
                        scaling_factor=0.5)
    vae.save_pretrained(path)
    return path


def test_latent_run_trains_in_the_vae_space_and_samples_decoded_images(tmp_path, judge_cache):
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL

    from mmtx.diffusion.latent import Latents
    from mmtx.sample import load_generator

    vae_dir = _tiny_vae(tmp_path / "vae")
    run_dir = tmp_path / "run"
    result = train(QUICK, run_dir=run_dir, overrides=[*TINY, f"task.args.vae={vae_dir}"])
    model = result["model_module"]
    # The generator reads and writes latents: 4 channels at 16 / 2 = 8 px.
    x = torch.zeros(1, 4, 8, 8)
    assert model.eval()(x, torch.zeros(1), y=torch.zeros(1, dtype=torch.long)).shape == x.shape
    assert (run_dir / "grid.png").is_file()
    assert json.loads((run_dir / "generation.json").read_text())["vae"] == str(vae_dir.resolve())
    # Encoding is the autoencoder's posterior mean (or a draw) times its scaling factor.
    ref = AutoencoderKL.from_pretrained(vae_dir).eval()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    lat = Latents(ref)
    with torch.no_grad():
        torch.testing.assert_close(lat.encode(images, sample=False),
                                   ref.encode(images).latent_dist.mean * 0.5)
        torch.testing.assert_close(lat.decode(torch.ones(1, 4, 8, 8)),
                                   ref.decode(torch.ones(1, 4, 8, 8) / 0.5).sample.clamp(-1, 1))
    # Sampling a latent run decodes to images; --vae finds a moved autoencoder folder.
    moved = vae_dir.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match="not an AutoencoderKL folder"):
        load_generator(run_dir)
    cli_main(["sample", str(run_dir), "--n", "2", "--steps", "2", "--vae", str(moved),
              "--out", str(tmp_path / "g.png")])
    _, task, _ = load_generator(run_dir, vae=moved)
    cond, _ = task.conditions(2)
    out = task.sample_images(model, cond, 2, seed=0, steps=2)
    assert out.shape == (2, 3, 16, 16) and out.abs().max() <= 1
    assert (tmp_path / "g.png").is_file()


def test_a_converted_diffusers_dit_samples_images_through_a_vae(tmp_path):
    """The published-weights path, at toy size: a diffusers DiTTransformer2DModel converted by
    from_diffusers_dit, a task restored by hand (no run directory), DDIM in the VAE's latent
    space, decoded to images."""
    diffusers = pytest.importorskip("diffusers")
    from mmtx.models.dit import from_diffusers_dit
    from mmtx.train.tasks import create_task

    torch.manual_seed(0)
    ref = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16,
                                          in_channels=4, out_channels=8, num_layers=2,
                                          sample_size=8, patch_size=2, num_embeds_ada_norm=7)
    shared = ref.transformer_blocks[0].norm1.emb.state_dict()  # as published weights hold it
    ref.transformer_blocks[1].norm1.emb.load_state_dict(shared)
    model = from_diffusers_dit(ref).eval()
    task = create_task("generation", objective="ddpm", sampler="ddim", sample_steps=3,
                       judge=False, vae=str(_tiny_vae(tmp_path / "vae")))
    task.restore({"image_shape": [3, 16, 16], "num_classes": 7, "class_names": None})
    assert task.model_shape == (4, 8, 8)
    images = task.sample_images(model, {"y": torch.tensor([1, 5])}, 2, seed=0, cfg_scale=2.0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    again = task.sample_images(model, {"y": torch.tensor([1, 5])}, 2, seed=0, cfg_scale=2.0)
    assert torch.equal(images, again)  # a seed fixes the images
