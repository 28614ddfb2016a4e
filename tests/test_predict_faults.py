"""`mmtx caption` and `mmtx zeroshot` given what they cannot use, as real processes: a folder,
a FIFO or a decompression bomb where an image should be, a damaged model.safetensors or
model.json, a template with two {}, a label given twice, --attn over more images than one figure
shows. Each is one line on stderr naming the file or argument, exit code 2, and no hang."""

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from procs import run_commands
from test_data_faults import _png_header

from mmtx.data import ShapesDataset
from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
DATA = {"name": "shapes", "args": {"task": "caption", "num_samples": 32, "image_size": 16},
        "batch_size": 16}
TINY = dict(dim=16, depth=1, num_heads=2, text_depth=1)


def _config(model, task, **args):
    return {"model": {"name": model, "args": {**TINY, **args}}, "data": DATA, "task": task,
            "train": {"max_steps": 2, "log_every": 1, "eval_every": 0},
            "logging": {"progress": False}}


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every command of this file, run once (each in its own process), by name."""
    tmp = tmp_path_factory.mktemp("predict")
    cap, clip = tmp / "captioner", tmp / "clip"
    train(_config("captioner_tiny_patch4_32", {"name": "captioning", "args": {"max_len": 16}}),
          cap)
    train(_config("clip_tiny_patch4_32", {"name": "contrastive", "args": {"max_len": 16}},
                  text_dim=16, embed_dim=16), clip)
    ds = ShapesDataset(split="test", num_samples=1, task="caption", image_size=16)
    pixels = ((ds[0]["image"].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    good = tmp / "scene.png"
    Image.fromarray(np.ascontiguousarray(pixels)).save(good)
    (tmp / "folder.png").mkdir()
    os.mkfifo(tmp / "pipe.png")
    _png_header(tmp / "bomb.png", 30_000, 30_000)
    for name, damage in (("cap_weights", "model.safetensors"), ("clip_weights",
                                                                 "model.safetensors"),
                         ("cap_spec", "model.json")):
        shutil.copytree(clip if name.startswith("clip") else cap, tmp / name)
        target = tmp / name / damage
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    commands = {
        "folder": ["caption", str(cap), str(good), str(tmp / "folder.png")],
        "folder_zeroshot": ["zeroshot", str(clip), str(tmp / "folder.png"), "--labels",
                            "circle,square"],
        "fifo": ["caption", str(cap), str(tmp / "pipe.png")],
        "bomb": ["caption", str(cap), str(good), str(tmp / "bomb.png")],
        "cap_weights": ["caption", str(tmp / "cap_weights"), str(good)],
        "clip_weights": ["zeroshot", str(tmp / "clip_weights"), str(good), "--labels",
                         "circle,square"],
        "cap_spec": ["caption", str(tmp / "cap_spec"), str(good)],
        "template": ["zeroshot", str(clip), str(good), "--labels", "circle,square",
                     "--template", "a {} {}"],
        "brace": ["zeroshot", str(clip), str(good), "--labels", "circle", "--template", "a {"],
        "twice": ["zeroshot", str(clip), str(good), "--labels", "circle,square,circle"],
        "same_prompt": ["zeroshot", str(clip), str(good), "--labels", "circle,Circle"],
        "attn_many": ["caption", str(cap), *[str(good)] * 17, "--attn", str(tmp / "a.png")],
        "attn_format": ["caption", str(cap), str(good), "--attn", str(tmp / "a.txt")],
        "many": ["caption", str(cap), *[str(good)] * 130],  # three batches
        "attn": ["caption", str(cap), str(good), str(good), "--attn", str(tmp / "ok.png")],
    }
    writer = threading.Thread(target=_unblock_fifo, args=(tmp / "pipe.png", time.time() + 90),
                              daemon=True)  # a command that opens the FIFO fails, not hangs
    writer.start()
    out = run_commands(list(commands.values()), tmp / "logs", timeout=60, env=_env())
    return dict(zip(commands, out)), tmp


def _unblock_fifo(fifo, until):
    while time.time() < until:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # nobody reads it
            time.sleep(0.05)


def _error(results, name) -> str:
    res = results[0][name]
    assert res["code"] == 2, res
    assert res["stderr"].count("\n") == 1 and "Traceback" not in res["stderr"], res["stderr"]
    return res["stderr"]


@pytest.mark.parametrize("name, expected", [
    ("folder", r"^mmtx caption: error: image '.*folder.png' is a directory, not an image file$"),
    ("folder_zeroshot", r"^mmtx zeroshot: error: image '.*folder.png' is a directory"),
    ("fifo", r"^mmtx caption: error: image '.*pipe.png' is a FIFO, not a regular file$"),
    ("bomb", r"^mmtx caption: error: .*bomb.png: refused: Image size \(900000000 pixels\) "
             r"exceeds limit"),
    ("cap_weights", r"^mmtx caption: error: weights file '.*cap_weights/model.safetensors' "
                    r"does not load into the ImageCaptioner \(.*deserializing header"),
    ("clip_weights", r"^mmtx zeroshot: error: weights file '.*clip_weights/model.safetensors' "
                     r"does not load into the CLIP"),
    ("cap_spec", r"^mmtx caption: error: .*cap_spec/model.json: not valid JSON"),
    ("template", r"^mmtx zeroshot: error: --template: expected a text with one \{\} where the "
                 r"label goes .*got 'a \{\} \{\}'$"),
    ("brace", r"^mmtx zeroshot: error: --template: .*got 'a \{'$"),
    ("twice", r"^mmtx zeroshot: error: --labels: 'circle' is given twice"),
    ("same_prompt", r"^mmtx zeroshot: error: --labels: 'circle' and 'Circle' are the same "
                    r"prompt to the model's tokenizer"),
    ("attn_many", r"^mmtx caption: error: --attn: draws one row per image, at most 16, got 17 "
                  r"images"),
    ("attn_format", r"^mmtx caption: error: --attn: expected a file name ending in \.png .*"
                    r"got '.*a.txt'$"),
])
def test_a_bad_input_is_one_line_naming_it(results, name, expected):
    import re

    assert re.search(expected, _error(results, name).rstrip("\n")), results[0][name]["stderr"]


def test_nothing_is_written_for_a_refused_command(results):
    assert not (results[1] / "a.png").exists() and not (results[1] / "a.txt").exists()


def test_many_images_are_captioned_in_batches_and_a_few_drawn(results):
    many, attn = results[0]["many"], results[0]["attn"]
    assert many["code"] == 0 and len(many["stdout"].splitlines()) == 130, many["stderr"]
    assert len(set(line.split(": ", 1)[1] for line in many["stdout"].splitlines())) == 1
    assert attn["code"] == 0, attn["stderr"]
    assert Image.open(results[1] / "ok.png").size[0] > 0


def test_a_real_mmtx_process_says_the_same(results):
    """The forked commands above behave as `python -m mmtx` does (one started from scratch)."""
    tmp = results[1]
    proc = subprocess.run([sys.executable, "-m", "mmtx", "caption", str(tmp / "captioner"),
                           str(tmp / "pipe.png")], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr == results[0]["fifo"]["stderr"]


@pytest.mark.parametrize("task, data, expected", [
    ({"name": "contrastive", "args": {"max_len": 16}}, {"batch_size": 1},
     r"^mmtx train: error: data.batch_size: the contrastive task needs at least 2 images in a "
     r"batch .*got 1 per process x 1 process\(es\)$"),
    ({"name": "captioning", "args": {"max_len": 8}}, {},
     r"^mmtx train: error: task.args.max_len: expected >= 1\d, the tokens of the longest "
     r"training caption with bos and eos \('a .*'\), got 8; shorter, captions would be cut"),
])
def test_a_task_that_could_not_learn_is_refused_before_training(tmp_path, task, data, expected):
    import re

    import yaml

    model = "clip_tiny_patch4_32" if task["name"] == "contrastive" else \
        "captioner_tiny_patch4_32"
    cfg = _config(model, task, **({"text_dim": 16, "embed_dim": 16}
                                  if task["name"] == "contrastive" else {}))
    cfg["data"] = {**DATA, **data}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "mmtx", "train", str(tmp_path / "c.yaml"),
                           "--run-dir", str(tmp_path / "run")], env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert re.search(expected, proc.stderr.rstrip("\n")), proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step


def test_the_contrastive_batch_counts_every_process():
    from mmtx.train.tasks import create_task

    task = create_task("contrastive")
    task.check_batch(1, 2)  # one image per process, two in the gathered batch: negatives exist
    task.check_batch(2, 1)
    with pytest.raises(ValueError, match=r"got 1 per process x 1 process"):
        task.check_batch(1, 1)
