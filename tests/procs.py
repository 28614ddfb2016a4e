"""Live processes under a pid, read from /proc (Linux): what the kill tests check."""

from __future__ import annotations

from pathlib import Path


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
