"""The worker pool: an experiment's runs, one after another or several at once, with one
progress display for the whole experiment (runs done of N, elapsed, ETA).

Small models use one core poorly (per-op overheads dominate), so on a 2-core CPU two one-thread
runs side by side finish an experiment about twice as fast as one after another. Each worker
writes its console output (evaluation lines, warnings) to its run's `train.log`, so the
console shows only the experiment's own progress lines and stays readable with any number of
workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path


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
    if log is None:
        return fn(*args, **kwargs), time.perf_counter() - t
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, contextlib.redirect_stdout(f), \
            contextlib.redirect_stderr(f):
        return fn(*args, **kwargs), time.perf_counter() - t


def _init_worker() -> None:
    """Worker initializer (Linux): the kernel kills this worker when the experiment's process
    dies, even by SIGKILL, so no run goes on training unowned."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
    if workers == 1:
        for i, job in enumerate(jobs):
            t = time.perf_counter()
            if not job.done and progress.show:
                print(f"[{progress.done_before + progress.trained + 1}/{len(jobs)}] "
                      f"{job.key}", flush=True)
            results[i] = job.fn(*job.args, **job.kwargs)
            if not job.done:
                progress.finished(job.key, describe(results[i]), time.perf_counter() - t)
        return [results[i] for i in range(len(jobs))]
    ctx = multiprocessing.get_context("spawn")  # no forked copies of threads or CUDA state
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_in_worker, j.fn, j.args, j.kwargs, j.log): i
                   for i, j in enumerate(jobs) if not j.done}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i], seconds = fut.result()
            progress.finished(jobs[i].key, describe(results[i]), seconds)
    for i, job in enumerate(jobs):
        if job.done:
            results[i] = job.fn(*job.args, **job.kwargs)
    return [results[i] for i in range(len(jobs))]
