"""The captioning and contrastive tasks through the engine, and the commands that use their
runs on a user's image files: `mmtx caption`, `mmtx zeroshot`."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmtx.cli import main as cli_main
from mmtx.data import ShapesDataset
from mmtx.train import train
from mmtx.train.run import load_run
from mmtx.train.tasks.captioning import attribute_word_accuracy

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = {"name": "shapes", "args": {"task": "caption", "num_samples": 96, "image_size": 16},
        "batch_size": 16}


def _config(model: str, task: dict, **model_args) -> dict:
    return {"model": {"name": model, "args": model_args}, "data": DATA, "task": task,
            "optim": {"lr": 2e-3}, "train": {"max_steps": 4, "log_every": 2},
            "logging": {"progress": False}}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two shapes scenes written as PNG files, as a user would pass them."""
    out = tmp_path_factory.mktemp("images")
    ds = ShapesDataset(split="test", num_samples=2, task="caption", image_size=16)
    paths = []
    for i in range(2):
        pixels = ((ds[i]["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        Image.fromarray(np.ascontiguousarray(pixels)).save(out / f"scene{i}.png")
        paths.append(str(out / f"scene{i}.png"))
    return paths


@pytest.fixture(scope="module")
def captioner_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("captioner")
    cfg = _config("captioner_tiny_patch4_32", {"name": "captioning", "args": {"max_len": 16}},
                  dim=16, depth=1, num_heads=2, text_depth=1)
    return run, train(cfg, run)


def test_captioning_task_reports_and_writes(captioner_run):
    run, res = captioner_run
    for key in ("test/loss", "test/exact", "test/bleu4", "test/acc_colour", "test/acc_shape"):
        assert 0.0 <= res[key] < 10, key
    assert res["test_exact"] == res["test/exact"] and res["test/count"] == 96
    captions = json.loads((run / "test_captions.json").read_text())
    assert len(captions) == 50 and set(captions[0]) == {"pred", "true"}
    model, cfg, task = load_run(run)
    assert cfg.task.name == "captioning" and model.max_len == 16 and not model.training


def test_attribute_word_accuracy_by_position():
    acc = attribute_word_accuracy(["a small red circle above a large blue square"],
                                  ["a small red square above a small blue square"])
    assert acc == {"acc_colour": 1.0, "acc_shape": 0.5, "acc_size": 0.5}


def test_caption_command_prints_and_draws_attention(captioner_run, images, tmp_path, capsys):
    run, _ = captioner_run
    cli_main(["caption", str(run), *images, "--beam", "2", "--attn", str(tmp_path / "a.png")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == images
    assert (tmp_path / "a.png").stat().st_size > 0


def test_caption_command_errors(captioner_run, tmp_path, capsys):
    run, _ = captioner_run
    with pytest.raises(SystemExit) as e:
        cli_main(["caption", str(run), str(tmp_path / "missing.png")])
    assert e.value.code == 2 and "missing.png' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["caption", str(tmp_path), str(tmp_path / "x.png")])
    assert "no config.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("hard_negatives", [None, ["swap_attributes"]])
def test_contrastive_task_and_zeroshot_command(tmp_path, images, capsys, hard_negatives):
    cfg = _config("clip_tiny_patch4_32", {"name": "contrastive", "args": {
        "max_len": 16, "hard_negatives": hard_negatives, "zero_shot_images": 24}},
        dim=16, depth=1, num_heads=2, text_dim=16, text_depth=1, embed_dim=16)
    if hard_negatives:
        cfg["data"] = {**DATA, "args": {**DATA["args"], "return_foils": hard_negatives}}
    res = train(cfg, tmp_path / "clip")
    for key in ("test/image_to_text_R@1", "test/text_to_image_R@5", "test/zero_shot_shape",
                "test/zero_shot_colour"):
        assert 0.0 <= res[key] <= 1.0, key
    assert res["train/logit_scale"] == pytest.approx(1 / 0.07, rel=0.05)
    capsys.readouterr()  # the training's own lines
    cli_main(["zeroshot", str(tmp_path / "clip"), *images, "--labels", "circle,square,star",
              "--template", "a small red {}"])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all(sum(w in line for w in ("circle", "square", "star")) == 3
                                 for line in out)
    with pytest.raises(SystemExit):
        cli_main(["zeroshot", str(tmp_path / "clip"), images[0], "--labels", "circle,dog"])
    assert "'dog' has a word outside the model's vocabulary" in capsys.readouterr().err


def test_contrastive_step_encodes_captions_and_foils_in_one_pass_as_if_apart():
    # The step runs captions and foils through the text tower as one padded batch; the loss
    # must be the one of each encoded on its own (foils may be longer than their captions).
    from mmtx.data import CaptionCollate
    from mmtx.models import create_model
    from mmtx.models.contrastive import clip_loss
    from mmtx.train.tasks import create_task

    kinds = ["swap_attributes", "reverse_relation"]
    ds = ShapesDataset(num_samples=12, task="caption", image_size=16, return_foils=kinds)
    task = create_task("contrastive", max_len=16, hard_negatives=kinds)
    task.setup(ds)
    model = create_model("clip_tiny_patch4_32", **task.model_kwargs(ds), dim=16, depth=1,
                         num_heads=2, text_dim=16, text_depth=1, embed_dim=16)
    batch = CaptionCollate(task.tokenizer, 16, foils=kinds)([ds[i] for i in range(len(ds))])
    batch["foil_ids"] = torch.nn.functional.pad(batch["foil_ids"], (0, 2))  # longer than captions
    batch["foil_mask"] = torch.nn.functional.pad(batch["foil_mask"], (0, 2))
    loss, _ = task.step(model, batch)
    with torch.no_grad():
        want = clip_loss(model.encode_image(batch["image"]),
                         model.encode_text(batch["caption_ids"], batch["caption_mask"]),
                         model.scale(),
                         hard_negatives=model.encode_text(batch["foil_ids"], batch["foil_mask"]),
                         hard_negative_mask=batch["has_foil"])
    assert batch["has_foil"].any()
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-6)


def test_hard_negatives_need_foils_in_the_data(tmp_path):
    cfg = _config("clip_tiny_patch4_32", {"name": "contrastive",
                                          "args": {"hard_negatives": ["swap_objects"]}})
    with pytest.raises(ValueError, match="set data.args.return_foils"):
        train(cfg, tmp_path / "clip")
    assert torch.get_num_threads() == 1


def test_converse_says_the_same_scene_from_the_other_object():
    from mmtx.data import ShapesDataset
    from mmtx.data.scene_text import converse, describe_scene, spatial

    assert converse("a large cyan cross to the right of a large yellow diamond") == \
        "a large yellow diamond to the left of a large cyan cross"
    assert converse("two shapes: a small red star above a big blue circle") == \
        "two shapes: a big blue circle below a small red star"
    assert converse("a red circle") is None
    assert converse("a red star above a blue circle, and a green cross below the circle") is None
    # On real scenes the converse is the caption of the same objects listed the other way round
    ds = ShapesDataset(num_samples=50, task="caption", image_size=32)
    for i in range(50):
        objects = ds.scene(i)
        swapped = [objects[1], objects[0]]
        assert spatial(objects[1], objects[0]) in describe_scene(swapped, "caption").text()
        assert converse(ds[i]["caption"]) == describe_scene(swapped, "caption").text()


def test_exact_match_accepts_either_reading_of_a_two_object_caption():
    from mmtx.train.tasks.captioning import closest_reading

    true = "a small red circle above a large blue square"
    other = "a large blue square below a small red circle"
    assert closest_reading(other, true) == other  # the prediction is one true reading
    assert closest_reading(true, true) == true
    # a wrong caption is scored against the reading it is closest to, and is not exact
    wrong = "a large blue square above a small red circle"
    assert closest_reading(wrong, true) == other and wrong != other
