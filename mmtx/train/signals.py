"""Stop signals, shared by the training engine, the experiments' worker pool and the CLI.

SIGINT (Ctrl-C) and SIGTERM stop the work: a training loop saves a checkpoint first (its own
handler), anything else stops at once (every file is written atomically, so nothing is lost and
a rerun resumes). A pool worker dies with its runner, SIGKILL included.

This module imports nothing but the standard library: a pool worker imports it, and sets the
die-with-parent signal, before it imports torch (seconds in which the runner may be killed).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the work; a training in progress saved a checkpoint
    first. `signum` is the signal (a command exits with 128 + signum)."""

    def __init__(self, message: str = "interrupted", signum: int = signal.SIGINT):
        super().__init__(message, int(signum))  # both in args: it pickles (worker -> runner)
        self.signum = int(signum)

    def __str__(self) -> str:
        return self.args[0]


@contextmanager
def on_stop_signals(handler):
    """`handler(signum, frame)` for SIGINT and SIGTERM inside the block, the previous handlers
    restored after. Only the main thread can set handlers (Python runs them there); elsewhere
    this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_now(signum, frame):
    """A stop signal outside a training loop: stop at once. Nothing is lost, since every file
    is written atomically and a rerun resumes from the last checkpoint."""
    raise TrainingInterrupted(f"stopped by {signal.Signals(signum).name}", signum)


# ------------------------------------------------------------------------------ pool workers
def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (Linux), then exit at once if
    the parent `parent` has already died (the signal only covers a death after it is set:
    a runner killed while this worker was starting would otherwise leave it running)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # reparented: the runner is gone
        os._exit(1)


class WorkerStop:
    """A pool worker's stop state: whether it runs a job, and a stop signal that came while
    it did not (held until the next job begins, which then stops at once)."""

    busy = False
    signum = 0

    @classmethod
    def handler(cls, signum, frame) -> None:
        # A job outside its training loop (whose own handler saves a checkpoint first) stops
        # at once; an idle worker stays alive, or the pool would count it as crashed and kill
        # the others mid-save.
        if cls.busy:
            stop_now(signum, frame)
        cls.signum = signum

    @classmethod
    @contextmanager
    def job(cls):
        """Around one job: a stop that came before it stops it; one during it, at once."""
        if cls.signum:  # told to stop before this job (submitted before the stop) began
            stop_now(cls.signum, None)
        cls.busy = True
        try:
            yield
        finally:
            cls.busy = False


def init_worker(parent: int) -> None:
    """Pool worker initializer (the first code of ours a worker runs): it dies with `parent`,
    the runner, even by SIGKILL, so no run goes on training unowned; stop signals come from the
    runner only."""
    die_with_parent(parent)
    # Its own process group: a terminal's Ctrl-C reaches the runner alone, which forwards it
    # once (a second signal would make a training stop without saving).
    os.setpgrp()
    for s in STOP_SIGNALS:
        signal.signal(s, WorkerStop.handler)
    # The runner started this process with stop signals blocked (see the pool); one sent
    # meanwhile is delivered now, to the handler above.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
