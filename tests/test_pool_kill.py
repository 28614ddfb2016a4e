"""`mmtx run` killed by SIGKILL at any moment of its start leaves no process behind.

A real `python -m mmtx run` with two workers is killed at fixed times after it starts: while
it imports, while its workers start and import torch, and once they train. Every process it
started (found by a marker in their environment, since a process whose parent died is
reparented and is no longer its descendant), the workers and the multiprocessing resource
tracker included, must be gone within a bounded wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "experiments" / "cnn_vs_vit_quick.yaml"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc; the die-with-parent signal is Linux's")


def _marked(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live, non-zombie process whose environment holds
    `marker`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker.encode() not in (proc / "environ").read_bytes():
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # ended; its parent has not reaped it
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        found.append((int(proc.name), cmd))
    return found


def _first_worker(runner: int, marker: str, timeout: float = 60) -> None:
    """Wait until the runner has started a worker (a marked process other than the runner,
    the resource tracker apart): it is then in Python's start-up or importing torch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(pid != runner and "spawn_main" in cmd for pid, cmd in _marked(marker)):
            return
        time.sleep(0.01)
    raise AssertionError("the runner started no worker")


@pytest.mark.parametrize("kill_at", [0.5, 1, 2, 3, 4, 8, "first worker"])
def test_sigkill_of_mmtx_run_while_starting_leaves_no_process(tmp_path, kill_at):
    """Killed at fixed times, and the moment its first worker appears (the worker then
    imports for seconds before it can run any code of ours)."""
    marker = f"MMTX_KILL_TEST={uuid.uuid4().hex}"
    key, value = marker.split("=")
    env = {**os.environ, key: value, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mmtx", "run", str(QUICK), "--out",
                             str(tmp_path / "out"), "--set", "jobs=2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    try:
        if kill_at == "first worker":
            _first_worker(proc.pid, marker)
        else:
            time.sleep(kill_at)
        proc.kill()
        killed = time.monotonic()
        proc.wait(timeout=30)
        # A worker between its start and its first line of our code (Python's own start-up,
        # reading what the runner sent) cannot be told yet; it exits once it gets there.
        while (left := _marked(marker)) and time.monotonic() < killed + 20:
            time.sleep(0.25)
        assert not left, f"alive {time.monotonic() - killed:.0f} s after the kill: {left}"
    finally:
        for pid, _ in _marked(marker):  # never leave them to the next test
            os.kill(pid, signal.SIGKILL)
