"""Live processes under a pid, read from /proc (Linux): what the kill tests check."""

from __future__ import annotations

import ctypes
import signal
import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def run_commands(commands: list[list[str]], out: Path, timeout: float = 60.0,
                 env: dict | None = None) -> list[dict]:
    """Run each `mmtx ARGV...` of `commands` as its own process, and return per command its
    exit code ("timeout" when it ran past `timeout` seconds and was killed), stdout and stderr.

    One helper process (this file run as a script) imports mmtx once and forks a child per
    command: each is a real process with its own exit code and output, without paying for the
    imports again."""
    import json
    import subprocess
    import sys

    out.mkdir(parents=True, exist_ok=True)
    spec = out / "commands.json"
    spec.write_text(json.dumps({"commands": commands, "timeout": timeout}))
    subprocess.run([sys.executable, __file__, str(spec)], env=env, check=True,
                   timeout=timeout * len(commands) + 120)
    return json.loads((out / "results.json").read_text())


def fork_cli(argv: list[str], log: Path, before=None) -> int:
    """Run `mmtx argv` in a forked child, its output in log.out / log.err; returns its pid.
    `before()`, if given, runs in the child first (e.g. to arm a kill point). The caller must
    have imported what the command needs (nothing run on a thread pool yet, so a fork is safe)."""
    import os
    import sys

    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        for fd, suffix in ((1, ".out"), (2, ".err")):
            os.dup2(os.open(f"{log}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        if before is not None:
            before()
        from mmtx.cli import main

        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _helper(spec_file: str) -> None:
    import json
    import os
    import signal
    import time

    import mmtx.cli  # noqa: F401  (imported once, before the forks)
    import mmtx.predict  # noqa: F401

    spec = json.loads(Path(spec_file).read_text())
    folder, results = Path(spec_file).parent, []
    for n, argv in enumerate(spec["commands"]):
        log = folder / f"command{n}"
        pid = fork_cli(argv, log)
        end, status = time.time() + spec["timeout"], None
        while status is None and time.time() < end:
            done, raw = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(raw) if done else None
            time.sleep(0.02)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        results.append({"argv": argv, "code": status, "stdout": Path(f"{log}.out").read_text(),
                        "stderr": Path(f"{log}.err").read_text()})
    (folder / "results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    import sys

    _helper(sys.argv[1])
