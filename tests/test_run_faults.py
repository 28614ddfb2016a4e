"""`mmtx run` and `mmtx train` as real processes, killed and interrupted.

A small experiment (a copy of experiments/cnn_vs_vit_quick.yaml made tiny, one job) is killed
by SIGKILL at many points of its life and rerun each time; it must end with the report and
results of a run never killed. Ctrl-C and SIGTERM must stop runs after a checkpoint, start
nothing new, exit 130 / 143 with one line saying how to continue, and leave no worker behind;
a second `mmtx run` of a directory in use is refused at once.

Every command runs in a process forked from one helper process (this file run as a script)
that imported mmtx once: each is a real process with its own signals and locks, without
paying for the imports again. A kill point is a function wrapped in that process to SIGKILL
it there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from procs import alive, descendants, fork_cli

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "cnn_vs_vit_quick.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------ the helper process
def _arm(point: str) -> None:
    """Make this process SIGKILL itself at `point` ("name", or "name:n" for the n-th time)."""
    import accelerate

    from mmtx.experiments import cache, report
    from mmtx.train import checkpoint, engine

    name, _, nth = point.partition(":")
    calls = [0]

    def hit():
        calls[0] += 1
        if calls[0] == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)

    def wrap(owner, attr, *, after=False, when=lambda *a, **k: True):
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            if not after and when(*args, **kwargs):
                hit()
            out = fn(*args, **kwargs)
            if after and when(*args, **kwargs):
                hit()
            return out
        setattr(owner, attr, wrapped)

    {   # before the first checkpoint is written
        "save": lambda: wrap(checkpoint, "save_checkpoint"),
        # weights and optimizer written into the temporary dir, train_state.json not yet
        "mid_save": lambda: wrap(accelerate.Accelerator, "save_state", after=True),
        # after the last checkpoint, before the final evaluation
        "finish": lambda: wrap(engine.Trainer, "_finish"),
        "before_result": lambda: wrap(cache, "store"),
        "after_result": lambda: wrap(cache, "store", after=True),
        # results.json written, report.md not yet
        "mid_report": lambda: wrap(report, "write_json", after=True,
                                   when=lambda path, obj: Path(path).name == "results.json"),
    }[name]()


def _fork(argv: list[str], log: Path, kill_at: str | None = None) -> int:
    """Run `mmtx argv` in a child process, its output in log.out / log.err; returns its pid."""
    return fork_cli(argv, log, before=(lambda: _arm(kill_at)) if kill_at else None)


def _rows_ready(watch: str, files: int, rows: int) -> bool:
    found = [p for p in Path("/").glob(watch.lstrip("/")) if p.is_file()]
    return len(found) >= files and all(p.read_text().count("\n") >= rows for p in found)


def _step(step: dict, log: Path) -> dict:
    """One command: killed at step["kill_at"], or sent step["signal"] once `files` metrics
    files matching step["watch"] have `rows` rows each (then step["second"], if any, is run
    meanwhile and must be refused)."""
    pid = _fork(step["argv"], log, step.get("kill_at"))
    out: dict = {"pid": pid}
    if "signal" in step:
        end = time.time() + 120
        while time.time() < end and not _rows_ready(step["watch"], step.get("files", 1),
                                                     step.get("rows", 3)):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise RuntimeError(f"{step['argv']} ended before it was signalled: "
                                   f"{Path(f'{log}.err').read_text()[-2000:]}")
            time.sleep(0.02)
        if "second" in step:
            second = _fork(step["second"], Path(f"{log}.second"))
            out["second"] = {"code": os.waitstatus_to_exitcode(os.waitpid(second, 0)[1]),
                             "stderr": Path(f"{log}.second.err").read_text()}
        workers = descendants(pid)
        os.kill(pid, getattr(signal, step["signal"]))
    out["code"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if "signal" in step:
        end = time.time() + 10
        while time.time() < end and any(alive(w) for w in workers):
            time.sleep(0.1)
        out["workers"], out["left_alive"] = len(workers), [w for w in workers if alive(w)]
    out["stderr"] = Path(f"{log}.err").read_text()
    return out


def _helper(steps_file: str, logs: str) -> None:
    # Everything a command needs is imported here, once, before any fork (nothing has run
    # on a thread pool yet, so forking is safe).
    import accelerate  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import torch._dynamo  # noqa: F401  (imported by the first optimizer: ~3 s)

    import mmtx.cli  # noqa: F401
    import mmtx.experiments  # noqa: F401
    import mmtx.train  # noqa: F401
    import mmtx.viz.plots  # noqa: F401

    steps = json.loads(Path(steps_file).read_text())
    print(json.dumps([_step(s, Path(logs) / f"step{i}") for i, s in enumerate(steps)]))


# ------------------------------------------------------------------ the tests
def _experiment(path: Path, jobs: int, max_steps: int, checkpoint_every: int) -> Path:
    """cnn_vs_vit_quick.yaml made tiny: one small CNN, two seeds."""
    spec = yaml.safe_load(QUICK.read_text())
    spec["base"]["data"]["args"]["num_samples"] = 96
    spec["base"]["train"].update(max_steps=max_steps, checkpoint_every=checkpoint_every,
                                 eval_every=3, log_every=1)
    spec["grid"] = [{"model": [spec["grid"][0]["model"][0]], "seed": [0, 1, 2][:jobs + 1]}]
    spec["jobs"] = jobs
    spec["report"] = {}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# (point, what is killed there); the runs are r0 then r1, 6 steps, a checkpoint every 2
KILLS = [
    ("save", "r0 before its first checkpoint"),
    ("mid_save:2", "r0 mid-save of its second checkpoint (after a fresh start)"),
    ("finish", "r0 after its last checkpoint"),
    ("before_result", "r0 evaluated and measured, its result not written"),
    ("after_result", "r0 finished: result written, r1 not started"),
    ("mid_save", "r1 mid-save of its first checkpoint"),
    ("mid_report", "the report: results.json written, report.md not"),
]


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    """Every command of the tests below, each in its own process, and what came of it."""
    base = tmp_path_factory.mktemp("faults")
    kills = _experiment(base / "kills.yaml", jobs=1, max_steps=6, checkpoint_every=2)
    run = ["run", str(kills), "--out"]
    steps = [{"argv": run + [str(base / "reference")]}]
    steps += [{"argv": run + [str(base / "killed")], "kill_at": p} for p, _ in KILLS]
    steps += [{"argv": run + [str(base / "killed")]}]

    long2 = _experiment(base / "long2.yaml", jobs=2, max_steps=300, checkpoint_every=0)
    long1 = _experiment(base / "long1.yaml", jobs=1, max_steps=300, checkpoint_every=0)
    train = base / "train.yaml"
    train.write_text(yaml.safe_dump({
        "model": {"name": "convnet_small", "args": {"widths": [8, 16]}},
        "data": {"name": "shapes", "args": {"num_samples": 96, "image_size": 16},
                 "batch_size": 32},
        "train": {"max_steps": 60, "log_every": 1, "eval_every": 0, "threads": 1},
        "logging": {"progress": False}}))
    steps += [
        {"argv": ["run", str(long2), "--out", str(base / "two")], "signal": "SIGINT",
         "watch": f"{base}/two/runs/*/metrics.jsonl", "files": 2,
         "second": ["run", str(long2), "--out", str(base / "two")]},
        {"argv": ["run", str(long1), "--out", str(base / "one")], "signal": "SIGTERM",
         "watch": f"{base}/one/runs/*/metrics.jsonl"},
        {"argv": ["train", str(train), "--run-dir", str(base / "train")], "signal": "SIGTERM",
         "watch": f"{base}/train/metrics.jsonl"},
    ]
    (base / "steps.json").write_text(json.dumps(steps))
    logs = base / "logs"
    logs.mkdir()
    proc = subprocess.run([sys.executable, __file__, str(base / "steps.json"), str(logs)],
                          capture_output=True, text=True, timeout=400, cwd=base,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return base, results


def _stable(path: Path) -> dict:
    """results.json less what depends on timing or the directory."""
    timing = {"wall_s", "train_images_per_s", "infer_images_per_s", "run_dir"}
    out = json.loads(path.read_text())
    for row in out["runs"] + out["summary"]:
        for key in timing & set(row):
            del row[key]
        for point in row.get("curve", []):
            del point["wall_s"]
    return out


def _report(path: Path) -> list[str]:
    """report.md with the table's timing columns (train img/s, infer img/s, wall) blanked."""
    lines = []
    for line in path.read_text().splitlines():
        cells = line.split("|")
        if len(cells) == 12:
            cells[7:10] = ["~"] * 3
        lines.append("|".join(cells))
    return lines


def test_killed_at_any_point_of_its_life_an_experiment_ends_as_if_never_killed(commands):
    base, results = commands
    reference, kills, last = results[0], results[1:1 + len(KILLS)], results[1 + len(KILLS)]
    assert reference["code"] == 0, reference["stderr"][-2000:]
    for (point, what), step in zip(KILLS, kills):
        assert step["code"] == -signal.SIGKILL, f"{point} ({what}) never reached: " \
            f"{step['stderr'][-2000:]}"
    assert last["code"] == 0, last["stderr"][-2000:]
    killed = base / "killed"
    assert _stable(killed / "results.json") == _stable(base / "reference" / "results.json")
    assert _report(killed / "report.md") == _report(base / "reference" / "report.md")
    assert not list(killed.glob("runs/*/checkpoints/.tmp-*"))  # no half save left behind


def _one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


def test_ctrl_c_of_mmtx_run_with_two_workers(commands):
    base, results = commands
    two = results[-3]
    assert two["workers"] >= 2 and two["left_alive"] == []
    assert two["code"] == 130, two["stderr"][-2000:]
    assert _one_line(two["stderr"]) == (
        "mmtx run: interrupted: 2 run(s) stopped (those training saved a checkpoint), 1 not "
        f"started; continue with: mmtx run {base}/long2.yaml --out {base}/two")
    runs = sorted(p.name for p in (base / "two" / "runs").iterdir())
    assert runs == ["cnn-shapes-f1-s0", "cnn-shapes-f1-s1"]  # the third never started
    for run in runs:
        assert list((base / "two" / "runs" / run / "checkpoints").glob("step_*"))
    # a second `mmtx run` of the same directory, meanwhile, was refused at once
    assert two["second"]["code"] == 2
    assert _one_line(two["second"]["stderr"]) == (
        f"mmtx run: error: experiment directory '{base}/two' is in use by another process "
        f"(pid {two['pid']}); wait for it to end, or stop it (Ctrl-C saves a checkpoint) and "
        f"run again")


def test_sigterm_of_mmtx_run_in_one_process(commands):
    base, results = commands
    one = results[-2]
    assert one["code"] == 143, one["stderr"][-2000:]
    line = _one_line(one["stderr"])
    assert re.fullmatch(rf"mmtx run: interrupted at step \d+; saved {base}/one/runs/"
                        rf"cnn-shapes-f1-s0/checkpoints/step_\d+; continue with: mmtx run "
                        rf"{base}/long1.yaml --out {base}/one", line), line
    assert [p.name for p in (base / "one" / "runs").iterdir()] == ["cnn-shapes-f1-s0"]


def test_sigterm_of_mmtx_train_saves_and_says_how_to_continue(commands):
    from mmtx.cli import main

    base, results = commands
    train = results[-1]
    assert train["code"] == 143, train["stderr"][-2000:]
    line = _one_line(train["stderr"])
    m = re.fullmatch(rf"mmtx train: interrupted at step (\d+); saved {base}/train/checkpoints/"
                     rf"step_\d+; continue with: (mmtx train {base}/train.yaml --run-dir "
                     rf"{base}/train --resume)", line)
    assert m, line
    assert "SIGTERM: saving a checkpoint after this step" in \
        (base / "logs" / f"step{len(results) - 1}.out").read_text()
    main(m.group(2).split()[1:])  # the command it names finishes the run
    summary = json.loads((base / "train" / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["resumed_from"] == int(m.group(1))


if __name__ == "__main__":
    _helper(*sys.argv[1:])
