"""What a user can get wrong gets one line naming the file, key or argument, what was expected
and what came: bad experiment files and overrides on the command line, files that are not
UTF-8, a one-class image folder, 1-D or empty token ids and integer images."""

import json

import pytest
import torch
from PIL import Image

from mmtx import create_model
from mmtx.cli import main
from mmtx.data import ImageCaptionFolder, ImageFolderDataset
from mmtx.data.text import TextLMDataset

pytestmark = pytest.mark.usefixtures("single_thread")


def _one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("text, overrides, expected", [
    ("name: x\ngrid: {model: [vit]\n", [], r"experiment file .*x.yaml:3: invalid YAML"),
    ("", [], r"experiment file '.*x.yaml' is empty"),
    ("name: x\ngrid: [{model: [vit]}, {model: [cnn]}]\n", ["grid.5.seed=1"],
     r"--set grid.5.seed: '5' must index a list of 2 entries"),
    ("name: x\njobs: 2\ngrid: {model: [vit]}\n", ["jobs.max=1"],
     r"--set jobs.max: reaches inside 2, which is not a mapping"),
    ("name: x\ngrid: {model: [vit]}\n", ["base.optim.clip_grad=-1"],
     r"base: optim.clip_grad: expected >= 0 .*got -1.0"),
])
def test_bad_experiment_files_and_overrides_are_one_line(tmp_path, capsys, text, overrides,
                                                         expected):
    import re

    path = tmp_path / "x.yaml"
    path.write_text(text)
    argv = ["run", str(path), "--out", str(tmp_path / "out")]
    err = _one_line_error(capsys, argv + [w for o in overrides for w in ("--set", o)])
    assert re.search(expected, err), err


def test_bad_training_config_is_one_line(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("model: {name: convnet_small}\noptim: {min_lr: -0.01}\n")
    err = _one_line_error(capsys, ["train", str(path), "--run-dir", str(tmp_path / "run")])
    assert err.startswith("mmtx train: error: optim.min_lr: expected in [0, optim.lr=0.001], "
                          "got -0.01")
    assert not (tmp_path / "run").exists()


def test_a_text_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"the cat sat\n" * 50 + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"path: text file '{path}': not UTF-8 text \(byte 603 "
                                         r"is 0xe9\)"):
        TextLMDataset("train", path=str(path))


def test_a_captions_file_that_is_not_utf8_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    line = json.dumps({"image": "a.png", "caption": "a red circle"}) + "\n"
    (tmp_path / "captions.jsonl").write_bytes(line.encode() + b'{"image": "a.png", '
                                              b'"caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"captions '.*captions.jsonl': not UTF-8 text"):
        ImageCaptionFolder(tmp_path)


def test_a_one_class_image_folder_is_refused(tmp_path):
    (tmp_path / "circle").mkdir()
    for i in range(6):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "circle" / f"{i}.png")
    with pytest.raises(ValueError, match=r"has 1 class folder\(s\) \['circle'\]; expected at "
                                         r"least 2"):
        ImageFolderDataset(tmp_path)


def test_token_ids_must_be_a_batch_of_nonempty_prompts():
    model = create_model("gpt_tiny", depth=1, dim=32, num_heads=2).eval()
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \(B, L\), got \(3,\)"):
        model.generate(torch.tensor([1, 2, 3]), 2)
    with pytest.raises(ValueError, match=r"ids must be an integer tensor \(B, L\), got \(3,\)"):
        model(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"a prompt of at least one token .* shape \(2, 0\)"):
        model.generate(torch.zeros(2, 0, dtype=torch.long), 2)


def test_integer_images_are_refused_naming_the_dtype():
    model = create_model("captioner_tiny_patch4_32").eval()
    with pytest.raises(ValueError, match=r"images must be a float tensor .*got torch.uint8"):
        model.caption(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), max_new_tokens=2)
    for name in ("convnet_small", "resnet18_small"):  # the CNNs say the same
        with pytest.raises(ValueError, match=r"images must be a float tensor .*got torch.uint8"):
            create_model(name, num_classes=3)(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
