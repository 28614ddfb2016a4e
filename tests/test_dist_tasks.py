"""Every task on several processes (torchrun, gloo, CPU, real processes): two processes with
batches of B / 2, and two "machines" (two torchrun launches of one process each, joined by a
local rendezvous), end as one process with batches of B: the same loss curve, final weights
and evaluation metrics, each evaluation item counted once; metrics are written once and a
checkpoint holds every process's RNG state.

The runs are tests/dist_tasks.py's (dropout off, every other draw per item). Tolerances: the
processes see the same items and draw the same per-item randomness, so only the float
summation order differs (two half-batch gradients averaged by an all-reduce instead of one
full-batch sum, per-token losses divided by an all-reduced count). Measured over 6 Adam steps:
train losses within 2e-7 (relative), weights within 6e-6 (absolute, lr 3e-3); evaluation
metrics equal to 2e-8. The bounds below leave ~10x of that, and are far below what a real
difference makes: per-token losses averaged per process (a mean of two half-batch means
instead of the global mean) moved the seq2seq, masked-LM and captioning losses by 3e-4 to 4e-4
(relative) and their weights by 5e-3 to 1.4e-2 in the same 6 steps.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from dist_tasks import CASES, STRATEGY, config
from procs import free_port
from safetensors.torch import load_file
from test_train_support import run_in_subprocess_env

from mmtx.train import list_checkpoints, train

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                 reason="torch.distributed with gloo is not available")]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "tests" / "dist_tasks.py")
LOSS_RTOL, WEIGHT_ATOL, METRIC_RTOL = 2e-6, 5e-5, 1e-6
MACHINES_CASES = ["classification", "generation_class_ema"]
TIMEOUT_S = 400
TASKS = [c for c in CASES if c not in STRATEGY]  # the DiT by strategy: test_dist_fsdp.py


def _torchrun(*args) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, judge_cache):
    """{"one" | "two" | "machines": out dir}: the three layouts, trained at once (the one-process
    reference here, while the launched processes start). The class-conditional generator's
    samples are judged (fd_shapes, cond_acc), each process training the tiny judge into the
    module's MMTX_CACHE."""
    out = tmp_path_factory.mktemp("dist")
    env = run_in_subprocess_env(ROOT)
    port = free_port()
    machines = [
        _torchrun("--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                  "--master-addr", "127.0.0.1", "--master-port", str(port), SCRIPT,
                  str(out / "machines"), *MACHINES_CASES) for rank in (0, 1)]
    commands = [_torchrun("--standalone", "--nproc-per-node", "2", SCRIPT, str(out / "two"),
                          *TASKS), *machines]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in commands]
    try:
        for case in TASKS:
            train(config(case, 1), run_dir=out / "one" / case)
        logs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    return {name: out / name for name in ("one", "two", "machines")}


def _losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


def _compare(one: Path, many: Path, processes: int) -> None:
    a, b = (json.loads((r / "summary.json").read_text()) for r in (one, many))
    assert (a["num_processes"], b["num_processes"]) == (1, processes)
    assert a["global_batch_size"] == b["global_batch_size"]
    la, lb = _losses(one), _losses(many)
    assert len(la) == len(lb) == a["steps"] and la[0] != la[-1]  # it trained
    torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), rtol=LOSS_RTOL, atol=0)
    wa, wb = load_file(one / "model.safetensors"), load_file(many / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=WEIGHT_ATOL, msg=k)
    metrics = [k for k, v in a.items() if k.startswith(("val/", "test/"))
               and isinstance(v, (int, float)) and not k.endswith("_s_per_image")]
    assert metrics and {k for k in b if k in metrics} == set(metrics)
    for k in metrics:  # counts exactly: no item dropped, none counted twice
        assert b[k] == (a[k] if k.endswith("count") else pytest.approx(a[k], rel=METRIC_RTOL)), k


@pytest.mark.parametrize("case", TASKS)
def test_two_processes_match_one(runs, case):
    _compare(runs["one"] / case, runs["two"] / case, 2)


@pytest.mark.parametrize("case", MACHINES_CASES)
def test_two_machines_match_one(runs, case):
    _compare(runs["one"] / case, runs["machines"] / case, 2)


def test_evaluation_counts_every_item_once(runs):
    # 37 images per split, evaluated by two processes in batches of 16: the last global batch
    # is padded by the loader, and the padding must not be counted
    for case in ("classification", "captioning", "contrastive_hard_negatives",
                 "generation_class_ema"):
        summary = json.loads((runs["two"] / case / "summary.json").read_text())
        assert summary["val/count"] == summary["test/count"] == 37, case


def test_judged_samples_are_compared(runs):
    # the generator's judged measures are among the metrics compared above: torchmetrics'
    # Frechet distance summed every process's statistics until told not to (fd_shapes 0.4% off)
    summary = json.loads((runs["two"] / "generation_class_ema" / "summary.json").read_text())
    assert {"val/fd_shapes", "val/fd_shapes_floor", "val/cond_acc_shape"} <= set(summary)


def test_metrics_written_once_and_checkpoint_holds_every_rng(runs):
    run = runs["two"] / "classification"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "val/loss" in r] == [3, 6]
    (_, newest), = list_checkpoints(run)[-1:]
    assert {p.name for p in newest.glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
