"""The README's command for several processes on CPU really starts them: `mmtx train` under
`accelerate launch --multi_gpu --num_processes 2` runs with world size 2, says so once, and
prints its result once. (`accelerate launch --cpu --num_processes 2` starts ONE process:
Accelerate's `--cpu` picks its single-process launcher, which reads --num_processes only for
mpirun.)"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from procs import free_port
from test_train_support import run_in_subprocess_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_readme_cpu_command_starts_two_processes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model": {"name": "vit_tiny_patch4_32", "args": {"dim": 16, "depth": 1, "num_heads": 2}},
        "data": {"name": "shapes", "args": {"task": "shape", "image_size": 16,
                                            "num_samples": 32}, "batch_size": 4},
        "train": {"max_steps": 2, "threads": 1}}))
    # `accelerate` is the console script of accelerate_cli: run it with this interpreter
    # and a free port instead of the default 29500, which another run on the host may hold
    command = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
               "--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()),
               "-m", "mmtx", "train", str(config), "--run-dir", str(tmp_path / "run")]
    readme = (ROOT / "README.md").read_text()
    assert "accelerate launch --multi_gpu --num_processes 2 -m mmtx train" in readme
    # HF_HOME: no accelerate config file of the user's changes what the command does
    env = {**run_in_subprocess_env(ROOT), "HF_HOME": str(tmp_path / "hf"),
           "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert re.findall(r"world size (\d+) \(", out) == ["2"]  # the main process only
    assert len(re.findall(r'"num_processes": 2', out)) == 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
