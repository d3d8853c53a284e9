"""Runs a batch of planned runs: skips those with a result, executes the rest, records every
outcome.

Launchers: ``inline`` (one after another in this process), ``local`` (a pool of worker
processes, each importing torch once and taking runs as they free up) and ``slurm`` (a job
array through submitit, `cp.slurm`). A run that raises is recorded as ``failed`` with the
traceback's tail; a worker process that dies (out of memory, a signal) takes its runs with it
and they are retried once in a fresh pool. Progress lines say the stage, runs done out of the
total, and an ETA from the tokens still to train.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import multiprocessing
import os
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import RESULT_FILE, RunConfig, RunResult, load_result, write_json_atomic
from .plan import PlannedRun
from .spec import LauncherSpec
from .study import Study

EVENTS_FILE = "events.jsonl"
ResultHook = Callable[[PlannedRun, RunResult], None]


class LaunchError(RuntimeError):
    """Runs cannot be launched as configured (no SLURM here, a partition SLURM refuses, local
    workers that die before starting anything): a setting or an environment the user must
    fix, not a failed run."""


def log_event(run_dir: Path, event: str, **info) -> None:
    """Append one line to the run's event log (start/finish per attempt: audit trail)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rec = {"event": event, "time": time.time(), "host": socket.gethostname(),
           "pid": os.getpid(), **info}
    with open(run_dir / EVENTS_FILE, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_events(run_dir: Path) -> list[dict]:
    """The run's event log, oldest first (empty if it has none)."""
    path = run_dir / EVENTS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def execute(cfg: RunConfig, run_dir: Path, threads: int = 0,
            should_stop: Optional[Callable[[], bool]] = None) -> RunResult:
    """Train one run into ``run_dir``; an exception becomes a recorded ``failed`` result.
    ``should_stop`` asks the run to stop at a checkpoint (see `cp.train.train`). In a
    data-parallel process group every rank calls this; rank 0 alone writes."""
    from .distributed import is_writer
    from .train import train

    if threads:
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                   threads=threads))
    writer = is_writer()

    def note_resume(rec: dict) -> None:
        if writer and rec.get("event") == "resumed":
            log_event(run_dir, "resumed", step=rec["step"])

    if writer:
        log_event(run_dir, "start")
    try:
        result = train(cfg, run_dir, log=note_resume, should_stop=should_stop)
    except Exception as e:  # a crash is a result, not the end of the study
        tail = "".join(traceback.format_exception(e))[-2000:]
        result = RunResult(run_id=cfg.run_id(), status="failed", diverged=False,
                           reason=f"{type(e).__name__}: {e}\n{tail}", steps=0,
                           total_steps=cfg.scale.steps, tokens=0, final_val_loss=float("nan"))
        if writer:
            write_json_atomic(run_dir / RESULT_FILE, result.to_dict())
    if writer:
        log_event(run_dir, "finish", status=result.status,
                  **({"step": result.steps} if result.status == "stopped" else {}))
    return result


def _started_here(run_dir: Path, since: float) -> bool:
    """Whether the run started after ``since`` and has not finished (per its event log)."""
    recent = [e["event"] for e in read_events(run_dir) if e["time"] >= since]
    return recent.count("start") > recent.count("finish")


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


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


def record_failed(pr: PlannedRun, reason: str, study: Study) -> RunResult:
    """Record ``pr`` as failed (a result like any other) and return that result."""
    result = RunResult(run_id=pr.run_id, status="failed", diverged=False, reason=reason,
                       steps=0, total_steps=pr.config.scale.steps, tokens=0,
                       final_val_loss=float("nan"))
    write_json_atomic(study.run_dir(pr.run_id) / RESULT_FILE, result.to_dict())
    return result


RunFn = Callable[[RunConfig, Path, int], RunResult]


class Launcher:
    """Runs batches of planned runs for one stage; a process pool, once started, serves every
    batch of the stage (a search's many small batches pay for torch's start-up once).

    ``max_parallel`` caps the pool (a search with 2 trials in flight needs 2 workers, and
    each can then have more threads). ``fn`` trains one run; it must be importable by worker
    processes. With ``kind: slurm`` each batch is a job array (`cp.slurm`) and every job
    trains with `execute` (``fn`` and the pool are not used).
    """

    def __init__(self, study: Study, spec: LauncherSpec, stage: str,
                 max_parallel: Optional[int] = None, on_result: Optional[ResultHook] = None,
                 echo: Callable[[str], None] = print, fn: RunFn = execute):
        self.study, self.spec, self.stage = study, spec, stage
        self.max_parallel, self.on_result, self.echo, self.fn = max_parallel, on_result, echo, fn
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._shape: Optional[tuple[int, int]] = None  # (workers, threads) of the pool

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _pool_for(self, workers: int, threads: int) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding threads
            self._pool = cf.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=_worker_init, initargs=(threads,))
        return self._pool

    def run(self, runs: Sequence[PlannedRun]) -> dict[str, RunResult]:
        """Results of ``runs`` by run id, training those that have none yet."""
        unique: dict[str, PlannedRun] = {}
        for pr in runs:
            unique.setdefault(pr.run_id, pr)
        results: dict[str, RunResult] = {}
        todo: list[PlannedRun] = []
        for rid, pr in unique.items():
            cached = load_result(self.study.run_dir(rid))
            if cached is not None and self.spec.retry_failed and cached.status == "failed":
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
            inline = self.spec.kind == "inline" or workers == 1
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
            from .slurm import run_batch

            run_batch(todo, self.study, self.spec, stage, finished, echo)
            return results
        if inline:
            for pr in todo:
                try:
                    result = self.fn(pr.config, self.study.run_dir(pr.run_id), threads)
                except Exception as e:
                    result = record_failed(pr, f"{type(e).__name__}: {e}", self.study)
                finished(pr, result)
            return results

        def run_pool(batch: list[PlannedRun], isolated: bool) -> list[PlannedRun]:
            """Run ``batch``; return the runs lost to a dying worker."""
            if isolated:  # a one-worker pool of its own
                self.close()
            pool = self._pool_for(1 if isolated else workers, threads)
            broken: list[PlannedRun] = []
            futures = {pool.submit(self.fn, pr.config, self.study.run_dir(pr.run_id),
                                   threads): pr for pr in batch}
            for fut in cf.as_completed(futures):
                pr = futures[fut]
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    broken.append(pr)
                    continue
                except Exception as e:  # raised outside train()'s own guard
                    result = record_failed(pr, f"{type(e).__name__}: {e}", self.study)
                finished(pr, result)
            if broken or isolated:
                self.close()  # a broken pool cannot be reused; an isolated one is done
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
                       if _started_here(self.study.run_dir(pr.run_id), session_start)]
            suspects = started or broken
            todo = [pr for pr in broken if pr not in suspects]
            echo(f"[{stage}] a worker process died; retrying {len(suspects)} run(s) one at a "
                 "time")
            for pr in suspects:
                if not run_pool([pr], isolated=True):
                    continue
                if not _started_here(self.study.run_dir(pr.run_id), session_start):
                    # A worker that dies before it starts any run is not the run's fault:
                    # recording a failure would hide a broken environment behind a cache.
                    raise LaunchError(
                        "worker processes die before starting a run. If you call cp from a "
                        "script, guard the script with `if __name__ == '__main__':` "
                        "(worker processes are spawned and import the main module); "
                        "otherwise check that `python -c 'import torch, cp'` works.")
                finished(pr, record_failed(pr, "its worker process died twice (out of memory? "
                                               "killed?)", self.study))
        return results


def launch(runs: Sequence[PlannedRun], study: Study, launcher: LauncherSpec, stage: str,
           on_result: Optional[ResultHook] = None, echo: Callable[[str], None] = print,
           fn: RunFn = execute) -> dict[str, RunResult]:
    """One batch through a `Launcher` of its own (at most one worker per run)."""
    with Launcher(study, launcher, stage, on_result=on_result, echo=echo, fn=fn) as runner:
        return runner.run(runs)
