"""Live processes under a pid, read from /proc (Linux): what the kill tests check."""

from __future__ import annotations

import ctypes
import signal
from pathlib import Path


def die_with_parent(alarm_s: int) -> None:
    """For a script a test starts: die with the parent (PR_SET_PDEATHSIG, Linux) and after
    `alarm_s` seconds whatever happens (SIGALRM's default action terminates)."""
    signal.alarm(alarm_s)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> set[int]:
    """Every descendant of `pid` alive now (zombies included; see `alive`)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:  # a zombie has ended; only its (killed) parent has not reaped it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
