"""`train.strategy`: ddp (default) or fsdp (FSDP2 through Accelerate's plugin).

On CPU the fsdp runs are refused before training: Accelerate applies its FSDP plugin to GPU
runs only (with CPU processes its state stays MULTI_CPU and it wraps the model in DDP whatever
the plugin says), and gloo itself would run FSDP2 (a plain fully_shard over gloo trains), so
the CPU test is of the refusal; the loss comparison with DDP needs two GPUs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dist_tasks import config
from test_train_support import run_in_subprocess_env

from mmtx.train import train

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


def test_unknown_strategy_names_the_key(tmp_path):
    cfg = config("dit_ddp", 1)
    cfg["train"]["strategy"] = "zero3"
    with pytest.raises(ValueError, match=r"train.strategy: expected one of ddp, fsdp, got 'zero3'"):
        train(cfg, run_dir=tmp_path / "run")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_fsdp_on_cpu_is_refused_before_training(tmp_path):
    before = os.environ.get("ACCELERATE_USE_FSDP")
    with pytest.raises(ValueError, match=r"train.strategy 'fsdp': Accelerate shards GPU runs "
                                         r"only, and this run is NO with 1 process"):
        train(config("dit_fsdp", 1), run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained
    # Accelerate set it for the plugin; the next run of this process must not inherit it
    assert os.environ.get("ACCELERATE_USE_FSDP") == before


@pytest.mark.skipif(torch.cuda.device_count() < 2,
                    reason="Accelerate applies its FSDP plugin to GPU runs only (on CPU it "
                           "keeps MULTI_CPU and wraps the model in DDP); needs 2 GPUs")
def test_fsdp_loss_equals_ddp_on_a_tiny_dit(tmp_path):
    script = str(ROOT / "tests" / "dist_tasks.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         script, str(tmp_path), "dit_ddp", "dit_fsdp"],
        env=run_in_subprocess_env(ROOT), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = {}
    for case in ("dit_ddp", "dit_fsdp"):
        rows = [json.loads(x) for x in (tmp_path / case / "metrics.jsonl").read_text().splitlines()]
        losses[case] = torch.tensor([r["train/loss"] for r in rows if "train/loss" in r])
    assert len(losses["dit_ddp"]) == 6
    # fp32 on both; only the reduction order differs (reduce-scatter vs all-reduce)
    torch.testing.assert_close(losses["dit_fsdp"], losses["dit_ddp"], rtol=1e-4, atol=0)
