"""benchmarks/gpu_check.py: without a GPU it says so and exits 0; its measuring code runs (on the
CPU here); card names find their peak."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_support import run_in_subprocess_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_and_exits_0():
    env = {**run_in_subprocess_env(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gpu_check: no CUDA GPU here" in proc.stdout


@pytest.mark.usefixtures("single_thread")
def test_measures_images_per_s_and_flops_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert _module().main(["--device", "cpu", "--steps", "2", "--modes", "bf16", "--jobs",
                           "gen_class", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert (row["job"], row["model"], row["mode"]) == ("gen_class", "dit_micro_4", "bf16")
    assert row["images_per_s"] > 0 and row["gflop_per_image"] > 0 and row["mfu"] is None
    assert "images/s" in capsys.readouterr().out  # the table


def test_peak_flops_by_card_name():
    peak = _module().peak_tflops
    assert peak("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert peak("NVIDIA H100 PCIe") == 756.0  # the specific name before the general one
    assert peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA L40S") == 362.1 and peak("NVIDIA L4") == 121.0
    assert peak("Some Future GPU") is None
