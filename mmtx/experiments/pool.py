"""The worker pool: an experiment's runs, one after another or several at once, with one
progress display for the whole experiment (runs done of N, elapsed, ETA).

Small models use one core poorly (per-op overheads dominate), so on a 2-core CPU two one-thread
runs side by side finish an experiment about twice as fast as one after another. Each worker
writes its console output (evaluation lines, warnings) to its run's `train.log`, so the
console shows only the experiment's own progress lines and stays readable with any number of
workers.

Stopping: on SIGINT (Ctrl-C) or SIGTERM the runner tells each worker to stop (the runs in
progress save a checkpoint), starts no other run, and raises TrainingInterrupted once they
have stopped. Workers die with the runner, even when it is killed by SIGKILL.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from ..train.signals import (
    STOP_SIGNALS,
    TrainingInterrupted,
    WorkerStop,
    init_worker,
    on_stop_signals,
)


@dataclass
class Job:
    """One run: `fn(*args)` returns its JSON-able result. `fn` must be a module-level function
    (workers receive it by pickling)."""

    key: str  # the run's name in progress lines
    fn: Callable[..., dict]
    args: tuple = ()
    log: Path | None = None  # where a worker's console output goes (None: the console)
    done: bool = False  # already finished (cached): counted, not trained
    kwargs: dict = field(default_factory=dict)


def is_main_process() -> bool:
    """Under `accelerate launch` / torchrun every process trains; only rank 0 reports."""
    return int(os.environ.get("RANK", "0")) == 0


def _fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """One line per finished run: `[done/N] key: what (run time) | elapsed, ETA`."""

    def __init__(self, total: int, todo: int, workers: int):
        self.total, self.todo, self.workers = total, todo, workers
        self.done_before = total - todo
        self.trained, self.t0, self.run_times = 0, time.perf_counter(), []
        self.show = is_main_process()

    def start(self) -> None:
        if self.show and self.todo:
            print(f"{self.todo} of {self.total} runs to train, {self.workers} at a time",
                  flush=True)

    def finished(self, key: str, what: str, run_s: float) -> None:
        self.trained += 1
        self.run_times.append(run_s)
        if not self.show:
            return
        elapsed = time.perf_counter() - self.t0
        left = self.todo - self.trained
        # The runs left take about the mean run time so far each, `workers` of them at once.
        # (Runs finished per elapsed second would overstate it: the first workers finish
        # together, after the start-up.)
        eta = sum(self.run_times) / len(self.run_times) * left / self.workers
        print(f"[{self.done_before + self.trained}/{self.total}] {key}: {what} ({_fmt(run_s)}) | "
              f"elapsed {_fmt(elapsed)}, ETA {_fmt(eta) if left else 'done'}", flush=True)


def _in_worker(fn, args, kwargs, log) -> tuple[dict, float]:
    """Runs in a worker: (result, seconds it took). Its output goes to the run's log file, not
    the shared console."""
    t = time.perf_counter()
    with WorkerStop.job():
        if log is None:
            return fn(*args, **kwargs), time.perf_counter() - t
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), \
                contextlib.redirect_stderr(f):
            return fn(*args, **kwargs), time.perf_counter() - t


def run_jobs(jobs: list[Job], workers: int = 1,
             describe: Callable[[dict], str] = lambda r: "done") -> list[dict]:
    """Run every job not marked done; returns the results in the order of `jobs` (cached ones
    read again through their own `fn`, which returns the stored result)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        workers = 1  # under several processes every process runs each training together
    todo = [j for j in jobs if not j.done]
    workers = max(1, min(workers, len(todo)))
    progress = Progress(len(jobs), len(todo), workers)
    progress.start()
    results: dict[int, dict] = {}
    if workers == 1:  # in this process: a stop signal stops the run (after its checkpoint)
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            if not job.done and progress.show:
                print(f"[{progress.done_before + progress.trained + 1}/{len(jobs)}] "
                      f"{job.key}", flush=True)
            results[i] = job.fn(*job.args, **job.kwargs)
            if not job.done:
                progress.finished(job.key, describe(results[i]), time.perf_counter() - t)
        return [results[i] for i in range(len(jobs))]
    _in_workers([(i, j) for i, j in enumerate(jobs) if not j.done], workers, progress,
                describe, results)
    for i, job in enumerate(jobs):
        if job.done:
            results[i] = job.fn(*job.args, **job.kwargs)
    return [results[i] for i in range(len(jobs))]


def _in_workers(todo: list[tuple[int, Job]], workers: int, progress: Progress, describe,
                results: dict[int, dict]) -> None:
    """Train `todo` in `workers` processes, submitting a run only when a worker is free, so
    that after a stop signal or a failed run nothing queued is left to start."""
    stop: list[int] = []  # the stop signals received
    errors: list[Exception] = []

    def on_signal(signum, frame):
        stop.append(signum)
        for child in multiprocessing.active_children():  # the workers
            with contextlib.suppress(ProcessLookupError):  # one may have just ended
                os.kill(child.pid, signal.SIGINT)  # its run saves a checkpoint, then stops

    queue, stopped = list(todo), 0
    ctx = multiprocessing.get_context("spawn")  # no forked copies of threads or CUDA state
    # init_worker is the first code a worker runs (before it imports torch): it dies with this
    # process, and exits if this process died while it was starting.
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                             initargs=(os.getpid(),)) as pool, \
            on_stop_signals(on_signal):
        running = {}
        while True:
            while queue and len(running) < workers and not (stop or errors):
                i, job = queue.pop(0)
                # A worker is started inside submit, and inherits the blocked signals: until
                # its initializer has set its handlers, a Ctrl-C would kill it (and with it
                # the pool, the other workers included).
                blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
                try:
                    fut = pool.submit(_in_worker, job.fn, job.args, job.kwargs, job.log)
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                running[fut] = i, job
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                i, job = running.pop(fut)
                try:
                    results[i], seconds = fut.result()
                except KeyboardInterrupt:  # stopped by our signal (after its checkpoint)
                    stopped += 1
                    continue
                except Exception as e:  # the others finish; none starts after a failure
                    errors.append(e)
                    continue
                progress.finished(job.key, describe(results[i]), seconds)
    if errors:
        raise errors[0]
    if stop:
        raise TrainingInterrupted(f"interrupted: {stopped} run(s) stopped (those training "
                                  f"saved a checkpoint), {len(queue)} not started", stop[0])
