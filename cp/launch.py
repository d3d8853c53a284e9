"""Runs a set of planned runs: skips those with a result, executes the rest, records every
outcome.

Launchers: ``inline`` (one after another in this process), ``local`` (a pool of worker
processes, each importing torch once and taking runs as they free up; a stage of one run too,
so that a run that kills its process never takes the stage with it) and ``slurm`` (a job
array through submitit, `cp.slurm`). Inside `warm_workers` (what a pipeline stage runs in)
every launcher of the stage shares one pool, whose first workers start -- and pay for
importing torch -- while the stage is still planning its runs.

Each run is executed by `cp.execute.execute`. A run that raises is recorded as ``failed`` with
the traceback's tail; a worker process that dies (out of memory, a signal) takes its runs with
it and they are retried once in a fresh pool. Progress lines say the stage, runs done out of
the total, and an ETA from the tokens still to train.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Optional

from .config import PlannedRun, RunConfig, RunResult
from .execute import LaunchError, ProgressFn, ResultHook, execute, read_events, record_failed
from .resources import LauncherSpec
from .study import RunFolder, StorageError, Study

Echo = Callable[[str], None]


def _started_here(folder: RunFolder, since: float) -> bool:
    """Whether the run started after ``since`` and has not finished (per its event log)."""
    recent = [e["event"] for e in read_events(folder) if e["time"] >= since]
    return recent.count("start") > recent.count("finish")


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    # What the first run would otherwise import on its clock: the model and the trainer, and
    # torch._dynamo (with sympy), which torch.optim loads on an optimiser's first use.
    from . import execute, train  # noqa: F401

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


def _ready() -> None:
    """A task that makes the pool start a worker (and run its initializer) now."""


def _new_pool(workers: int, threads: int) -> cf.ProcessPoolExecutor:
    ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads
    return cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                                  initargs=(threads,))


@dataclass
class _SharedPool:
    pool: cf.ProcessPoolExecutor
    size: int


_shared: Optional[_SharedPool] = None


@contextlib.contextmanager
def warm_workers(spec: LauncherSpec, expected_runs: Callable[[], int]) -> Iterator[None]:
    """Within this block, every `Launcher` with ``spec`` (kind ``local``) takes its workers
    from one pool, whose first worker starts at once and which has ``min(workers,
    expected_runs())`` started before the block's body runs -- while the caller plans its runs
    -- instead of when the first run is handed out. More start on demand (a process pool
    starts as many as runs are in flight)."""
    global _shared
    if spec.kind != "local" or _shared is not None:
        yield
        return
    size = spec.workers or os.cpu_count() or 1
    pool = _new_pool(size, spec.threads_per_run or 1)
    pool.submit(_ready)
    for _ in range(min(size, expected_runs()) - 1):
        pool.submit(_ready)
    _shared = _SharedPool(pool, size)
    try:
        yield
    finally:
        _shared = None
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class _Progress:
    stage: str
    total: int
    cached: int
    tokens_todo: int
    done: int = 0
    tokens_done: int = 0
    started: float = 0.0

    def line(self, pr: PlannedRun, result: RunResult) -> str:
        self.done += 1
        self.tokens_done += pr.tokens
        elapsed = time.perf_counter() - self.started
        left = self.tokens_todo - self.tokens_done
        eta = elapsed * left / self.tokens_done if self.tokens_done else 0.0
        loss = (f"loss {result.final_val_loss:.4f}" if result.ok else result.status)
        what = " ".join(f"{k}={v}" for k, v in pr.tags.items()
                        if k not in ("stage",) and v is not None)
        return (f"[{self.stage}] {self.cached + self.done}/{self.total} runs "
                f"({self.cached} cached) | {pr.run_id[:8]} {what}: {loss}, "
                f"{result.wall_s:.0f} s | elapsed {_hms(elapsed)}, ETA {_hms(eta)}")


def _hms(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def resolve_workers(spec: LauncherSpec, n_runs: int) -> tuple[int, int]:
    """(parallel runs, torch threads per run) for ``n_runs`` runs on this machine."""
    cores = os.cpu_count() or 1
    workers = spec.workers or cores
    workers = max(1, min(workers, n_runs))
    threads = spec.threads_per_run or max(1, cores // workers)
    return workers, threads


RunFn = Callable[[RunConfig, RunFolder, int], RunResult]


class Launcher:
    """Runs the planned runs of one stage, in as many calls to `run` as the stage likes; a
    process pool, once started, serves every call (a search's many small rounds pay for
    torch's start-up once).

    ``max_parallel`` caps the pool (a search with 2 trials in flight needs 2 workers, and
    each can then have more threads). ``fn`` trains one run; it must be importable by worker
    processes. With ``kind: slurm`` each call is a job array (`cp.slurm`) and every job
    trains with `execute` (``fn`` and the pool are not used). ``force`` trains runs that
    have a result again; ``progress`` receives the progress records of runs trained inline.
    """

    def __init__(self, study: Study, spec: LauncherSpec, stage: str,
                 max_parallel: Optional[int] = None, on_result: Optional[ResultHook] = None,
                 echo: Echo = print, fn: RunFn = execute, force: bool = False,
                 progress: Optional[ProgressFn] = None):
        self.study, self.spec, self.stage = study, spec, stage
        self.max_parallel, self.on_result, self.echo, self.fn = max_parallel, on_result, echo, fn
        self.force, self.progress = force, progress
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._borrowed = False  # the pool is `warm_workers`'s: not ours to shut down
        self._shape: Optional[tuple[int, int]] = None  # (workers, threads) of the pool

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, broken: bool = False) -> None:
        """Let go of the pool (``broken``: it is of no use to anyone any more)."""
        global _shared
        if self._pool is not None:
            if self._borrowed and broken and _shared is not None and _shared.pool is self._pool:
                _shared = None  # the block's later launchers start their own
            if not self._borrowed or broken:
                self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool, self._borrowed = None, False

    def _pool_for(self, workers: int, threads: int, batch: int) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            # The shared pool runs as many runs at once as it is given, up to its size: it
            # serves a batch that keeps within this launcher's own number of workers.
            if _shared is not None and (batch <= workers or workers == _shared.size):
                self._pool, self._borrowed = _shared.pool, True
            else:
                self._pool = _new_pool(workers, threads)
        return self._pool

    def run(self, runs: Sequence[PlannedRun]) -> dict[str, RunResult]:
        """Results of ``runs`` by run id, training those that have none yet."""
        unique: dict[str, PlannedRun] = {}
        for pr in runs:
            unique.setdefault(pr.run_id, pr)
        results: dict[str, RunResult] = {}
        todo: list[PlannedRun] = []
        for rid, pr in unique.items():
            cached = self.study.run(rid).load_result()
            if cached is not None and (self.force or (self.spec.retry_failed
                                                      and cached.status == "failed")):
                cached = None
            if cached is not None:
                results[rid] = cached
            else:
                todo.append(pr)
        stage, echo = self.stage, self.echo
        if not todo:
            if unique:
                echo(f"[{stage}] all {len(unique)} runs already have results")
            return results
        slurm = self.spec.kind == "slurm"
        if slurm:
            how = "on SLURM"
        else:
            if self._shape is None:
                self._shape = resolve_workers(self.spec, self.max_parallel or len(todo))
            workers, threads = self._shape
            inline = self.spec.kind == "inline"
            how = f"{'inline' if inline else f'{workers} worker(s)'} x {threads} thread(s)"
        echo(f"[{stage}] {len(todo)} runs to train ({len(results)} cached), {how}")
        progress = _Progress(stage, len(unique), len(results), sum(p.tokens for p in todo),
                             started=time.perf_counter())

        def finished(pr: PlannedRun, result: RunResult) -> None:
            results[pr.run_id] = result
            echo(progress.line(pr, result))
            if self.on_result is not None:
                self.on_result(pr, result)

        if slurm:
            from .slurm import run_jobs

            run_jobs(todo, self.study, self.spec, stage, finished, echo)
            return results
        if inline:
            for pr in todo:
                folder = self.study.run(pr.run_id)
                try:
                    if self.progress is not None and self.fn is execute:
                        result = execute(pr.config, folder, threads, progress=self.progress)
                    else:
                        result = self.fn(pr.config, folder, threads)
                except StorageError:
                    raise  # the folder's fault, not the run's: nothing is recorded
                except Exception as e:
                    result = record_failed(pr, f"{type(e).__name__}: {e}", folder)
                finished(pr, result)
            return results

        def run_pool(batch: list[PlannedRun], isolated: bool) -> list[PlannedRun]:
            """Run ``batch``; return the runs lost to a dying worker."""
            if isolated:  # a one-worker pool of its own
                self.close()
                self._pool = _new_pool(1, threads)
            pool = self._pool_for(workers, threads, len(batch))
            broken: list[PlannedRun] = []
            futures = {pool.submit(self.fn, pr.config, self.study.run(pr.run_id),
                                   threads): pr for pr in batch}
            for fut in cf.as_completed(futures):
                pr = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken.append(pr)
                    continue
                except StorageError:
                    self.close(broken=True)  # the other workers meet the same disk: stop them
                    raise
                except Exception as e:  # raised outside train()'s own guard
                    result = record_failed(pr, f"{type(e).__name__}: {e}",
                                           self.study.run(pr.run_id))
                finished(pr, result)
            if broken or isolated:
                self.close(broken=True)  # a broken pool cannot be reused; an isolated one is done
            return broken

        session_start = time.time()
        while todo:
            broken = run_pool(todo, isolated=False)
            if not broken:
                break
            # A dying worker takes the whole pool down. The runs it was training are suspects:
            # each is retried alone, and one that kills its worker again is recorded as
            # failed. Runs that had not started go back to the parallel pool.
            started = [pr for pr in broken
                       if _started_here(self.study.run(pr.run_id), session_start)]
            suspects = started or broken
            todo = [pr for pr in broken if pr not in suspects]
            echo(f"[{stage}] a worker process died; retrying {len(suspects)} run(s) one at a "
                 "time")
            for pr in suspects:
                if not run_pool([pr], isolated=True):
                    continue
                if not _started_here(self.study.run(pr.run_id), session_start):
                    # A worker that dies before it starts any run is not the run's fault:
                    # recording a failure would hide a broken environment behind a cache.
                    raise LaunchError(
                        "worker processes die before starting a run. If you call cp from a "
                        "script, guard the script with `if __name__ == '__main__':` "
                        "(worker processes are spawned and import the main module); "
                        "otherwise check that `python -c 'import torch, cp'` works.")
                finished(pr, record_failed(pr, "its worker process died twice (out of memory? "
                                           "killed?)", self.study.run(pr.run_id)))
        return results


def launch(runs: Sequence[PlannedRun], study: Study, launcher: LauncherSpec, stage: str,
           on_result: Optional[ResultHook] = None, echo: Echo = print,
           fn: RunFn = execute) -> dict[str, RunResult]:
    """Runs through a `Launcher` of their own (at most one worker per run)."""
    with Launcher(study, launcher, stage, on_result=on_result, echo=echo, fn=fn) as runner:
        return runner.run(runs)
