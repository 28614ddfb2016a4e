"""A full disk and a read-only folder, for real: tiny tmpfs file systems (mounting needs root;
without it these tests are skipped). `mmtx train` and `mmtx caption --attn` end with one line
naming the file they could not write, leave no partial or 0-byte file behind, and a run stopped
by a full disk resumes from its last complete checkpoint once there is room."""

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from procs import run_commands
from test_data_faults import _tree

from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"model": {"name": "convnet_small"},
          "data": {"name": "shapes", "args": {"num_samples": 64, "image_size": 16},
                   "batch_size": 16},
          "train": {"max_steps": 4, "checkpoint_every": 2, "log_every": 1},
          "logging": {"progress": False}}


@pytest.fixture
def mount(tmp_path):
    """mount(size, readonly=False) -> a fresh tmpfs folder; unmounted at the end."""
    mounted = []

    def make(size: str, readonly: bool = False) -> Path:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root and mount(8)")
        where = tmp_path / f"fs{uuid.uuid4().hex[:6]}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", WANDB_MODE="offline")


def _left_behind(root: Path) -> list[str]:
    """Files a failed write must not leave: empty ones and temporaries."""
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or
            (p.is_file() and p.stat().st_size == 0)]


def _one_line(res) -> str:
    assert res["code"] == 1, res
    assert res["stderr"].count("\n") == 1 and "Traceback" not in res["stderr"], res["stderr"]
    return res["stderr"].rstrip("\n")


def test_train_on_a_full_or_read_only_disk_is_one_line_and_resumes(tmp_path, mount):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    tiny, small, readonly = mount("200k"), mount("5M"), mount("100k", readonly=True)
    # 200k: room for config.yaml and metrics, not the first checkpoint (3.5 MB); 5M: room
    # for the checkpoint of step 2, not for step 4 beside it
    runs = [tiny / "run", small / "run", readonly / "run"]
    first, second, third = run_commands(
        [["train", str(config), "--run-dir", str(run)] for run in runs], tmp_path / "logs",
        env=_env())
    assert _one_line(first) == (
        f"mmtx train: error: cannot write {tiny}/run/checkpoints/step_00000002: No space left "
        f"on device ({first['stderr'].split('(')[1].split(')')[0]}); the last complete "
        f"checkpoint is none")
    assert "bytes free on its file system" in first["stderr"]
    assert f"cannot write {small}/run/checkpoints/step_00000004: No space left on device" in \
        _one_line(second)
    assert second["stderr"].rstrip().endswith(
        f"the last complete checkpoint is {small}/run/checkpoints/step_00000002")
    assert _one_line(third) == f"mmtx train: error: [Errno 30] Read-only file system: " \
                               f"'{readonly}/run'"
    assert _left_behind(tiny) == [] and _left_behind(small) == []
    assert not (small / "run" / "summary.json").exists()

    # room again: the run resumes from step 2 and finishes
    subprocess.run(["mount", "-o", "remount,size=20M", str(small)], check=True)
    resumed, = run_commands([["train", str(config), "--run-dir", str(runs[1]), "--resume"]],
                            tmp_path / "logs2", env=_env())
    assert resumed["code"] == 0, resumed["stderr"]
    summary = json.loads((small / "run" / "summary.json").read_text())
    assert summary["resumed_from"] == 2 and summary["steps"] == 4


def test_attention_figure_on_a_full_or_read_only_disk_is_one_line(tmp_path, mount):
    run = tmp_path / "captioner"
    train({"model": {"name": "captioner_tiny_patch4_32",
                     "args": dict(dim=16, depth=1, num_heads=2, text_depth=1)},
           "data": {"name": "shapes", "args": {"task": "caption", "num_samples": 32,
                                               "image_size": 16}, "batch_size": 16},
           "task": {"name": "captioning", "args": {"max_len": 16}},
           "train": {"max_steps": 2, "eval_every": 0}, "logging": {"progress": False}}, run)
    _tree(tmp_path / "images", classes=("x",), n=2)
    images = [str(tmp_path / "images" / "x" / f"{i}.png") for i in range(2)]
    full, readonly = mount("64k"), mount("64k", readonly=True)
    (full / "filler").write_bytes(b"\0" * (60 << 10))  # 4 KiB left: less than the figure
    results = run_commands([["caption", str(run), *images, "--attn", str(full / "a.png")],
                            ["caption", str(run), *images, "--attn", str(readonly / "a.png")]],
                           tmp_path / "logs", env=_env())
    assert _one_line(results[0]).startswith(
        f"mmtx caption: error: cannot write {full}/a.png: No space left on device (")
    assert sorted(p.name for p in full.iterdir()) == ["filler"]  # no PNG, whole or partial
    assert results[1]["code"] == 2 and results[1]["stdout"] == ""  # refused before captioning
    assert results[1]["stderr"] == (f"mmtx caption: error: --attn: cannot write "
                                    f"'{readonly}/a.png': {readonly} is read-only (or not "
                                    f"writable by this user)\n")
