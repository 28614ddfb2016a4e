"""Bad experiment files and arguments, checked once for every study kind: one line naming the
key or path at fault, before anything trains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtx.experiments import run_experiment
from mmtx.experiments.registry import load

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
QUICK = {kind: EXPERIMENTS / f"{kind}_quick.yaml" for kind in
         ("cnn_vs_vit", "relation", "rnn_vs_transformer", "generation_study", "vision_language")}


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("mmtx.train.train", fail)


@pytest.mark.parametrize("study", sorted(QUICK))
@pytest.mark.parametrize("jobs", ["0", "-1", "1.5", "two"])
def test_jobs_must_be_a_positive_int_in_every_kind(tmp_path, no_training, study, jobs):
    with pytest.raises(ValueError, match="jobs") as e:
        run_experiment(QUICK[study], tmp_path / "out", [f"jobs={jobs}"])
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out" / "runs").exists()


def test_jobs_above_the_core_count_is_said_in_one_line(capfd):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load(QUICK["vision_language"], [f"jobs={cores + 1}"])
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [f"warning: vision_language_quick: jobs {cores + 1} is more than the {cores} "
                   "CPU cores this process may use; the runs will share them"]
    load(QUICK["vision_language"], [f"jobs={cores}"])
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("value", ["-1", ".nan"])
def test_a_negative_flop_tolerance_names_flop_tolerance(tmp_path, no_training, value):
    with pytest.raises(ValueError, match=r"generation_study_quick: flop_tolerance must be >= 0"):
        run_experiment(QUICK["generation_study"], tmp_path, [f"flop_tolerance={value}"])


def test_out_that_is_a_file_fails_before_any_work(tmp_path):
    """`mmtx run --out x.txt` (or a path under a file): one line, exit 2, nothing trained."""
    file = tmp_path / "x.txt"
    file.write_text("notes\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH",
                                                                                     "")])}
    for out in (file, file / "sub"):
        proc = subprocess.run([sys.executable, "-m", "mmtx", "run", str(QUICK["cnn_vs_vit"]),
                               "--out", str(out)], capture_output=True, text=True, env=env,
                              timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == (f"mmtx run: error: experiment directory {str(out)!r}: "
                               f"{str(file)!r} is a file, not a directory\n")
        assert file.read_text() == "notes\n"
