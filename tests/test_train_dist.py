"""Two processes (torchrun, gloo on CPU) reach the loss of one process with the same global
batch, and log each metric once."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist
from test_train_support import run_in_subprocess_env, splits

from mmtx.train import list_checkpoints, train

pytestmark = pytest.mark.usefixtures("single_thread")

ROOT = Path(__file__).resolve().parents[1]
# Same data order and items either way (the order and augmentations are functions of the seed,
# epoch and index); only the float summation order differs: DDP averages two half-batch
# gradients instead of one full-batch mean. That is a few ulps per step; 12 steps stay within:
TOLERANCE = 1e-5


def _config(batch_size):
    return {"model": {"name": "test_tiny_mlp", "args": {"dropout": 0.0}},
            "data": {"name": "in-memory", "batch_size": batch_size},
            "optim": {"lr": 3e-3, "warmup_steps": 2},
            "train": {"max_steps": 12, "log_every": 2, "eval_every": 6, "checkpoint_every": 6,
                      "seed": 0},
            "logging": {"progress": False}}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_processes_match_one_process(tmp_path):
    one = train(_config(16), run_dir=tmp_path / "one", data=splits(augment=True))

    run = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(ROOT / "tests" / "test_train_support.py"), str(run), json.dumps(_config(8)),
         json.dumps({"augment": True})],
        env=run_in_subprocess_env(ROOT), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # the main process's summary file, not its stdout: what torchrun forwards of the workers'
    # output (and how it interleaves two of them) is not something the engine controls
    two = json.loads((run / "summary.json").read_text())
    assert two["num_processes"] == 2 and two["global_batch_size"] == one["global_batch_size"]
    for key in ("train/loss", "val/loss", "test/loss"):
        assert abs(two[key] - one[key]) <= TOLERANCE, (key, two[key], one[key])
    for key in ("val/acc", "test/acc", "val/count", "test/count"):
        assert two[key] == one[key], key  # no sample dropped or counted twice by the gather

    # metrics written once, by the main process: each step's rows appear once
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in rows if "val/loss" in r] == [6, 12]
    # one checkpoint per save, holding both processes' RNG states
    (_, newest), = list_checkpoints(run)[-1:]
    assert {p.name for p in newest.glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
