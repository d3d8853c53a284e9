"""Runs on SLURM through submitit: the runs of one launcher call become one job array, each job
trains one run into its run folder, and the stage process (on the login node) waits for the
results.

- Resources come from ``launcher.slurm`` merged with ``launcher.stages[stage]``; a job with
  several tasks (GPUs, nodes) trains its run data-parallel, one rank per task.
- A job told to make way -- SLURM's preemption SIGTERM, or submitit's signal before the time
  limit -- finishes its current steps, saves a checkpoint, and is requeued: submitit calls the
  job's ``checkpoint()`` and resubmits it, and the run resumes from ``checkpoint.pt``.
- Completion is read from the study folder (each job writes its run's ``result.json``) and from
  ``squeue``, which every cluster has (``sacct`` needs accounting, which some lack). A job that
  ends without a result is recorded as ``failed`` with the tail of its stderr; the rest go on.
- Each submission is noted in the run's event log, so a stage restarted after its process was
  killed waits for the jobs still queued instead of training the same runs twice.
"""

from __future__ import annotations

import getpass
import math
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, Optional

from submitit import JobEnvironment, SlurmExecutor
from submitit.core.utils import JobPaths
from submitit.helpers import Checkpointable, clean_env

from .config import PlannedRun, RunConfig, RunResult
from .distributed import process_group, slurm_environment
from .execute import LaunchError, ResultHook, execute, log_event, read_events, record_failed
from .resources import LauncherSpec, SlurmSpec
from .study import Study

# Job states in which a job may still produce its result (squeue's long names); any other
# state, or no longer being listed at all, means the job has ended.
ACTIVE_STATES = {"PENDING", "RUNNING", "SUSPENDED", "COMPLETING", "CONFIGURING", "REQUEUED",
                 "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED",
                 "RESV_DEL_HOLD", "POWER_UP_NODE", "UPDATE_DB"}
STDERR_TAIL = 2000  # characters of a failed job's stderr kept in its result


# ---------------------------------------------------------------------------------------------
# Inside the job.


class _StopSignals:
    """Turns the signals that ask a job to make way into a request the training loop honours
    at its next loss read-out, where a checkpoint is consistent. submitit's own handler, which
    would checkpoint and requeue mid-step, is kept and called once the checkpoint is on disk.

    The signals: submitit's (SIGUSR2 by default; SLURM sends it ``signal_delay_s`` before the
    time limit) and SIGTERM (SLURM's preemption, ``scancel``, ``scontrol requeue``)."""

    def __init__(self) -> None:
        self.usr = getattr(signal, "SIG" + JobEnvironment.USR_SIG)
        self.received: Optional[int] = None
        self.previous: dict[int, Callable[[int, Optional[FrameType]], Any] | int | None] = {}

    def __enter__(self) -> _StopSignals:
        for sig in (self.usr, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        # submitit's signal wins: it means "requeue me", SIGTERM only "stop".
        if self.received != self.usr:
            self.received = signum

    def requested(self) -> bool:
        return self.received is not None

    def hand_over(self) -> None:
        """The run stopped at a checkpoint: let submitit requeue the job (its signal), or end
        the job without a result (SIGTERM: SLURM itself requeues or cancels it). Never
        returns."""
        sig = self.received
        if sig is not None and sig == self.usr:
            handler = self.previous.get(sig)
            if callable(handler):
                handler(sig, None)  # rank 0: checkpoint(), scontrol requeue, exit
        # None: another rank's signal stopped the run before this rank's own arrived.
        why = signal.Signals(sig).name if sig is not None else "another rank's signal"
        sys.exit(f"cp: stopped at a checkpoint on {why}; the run resumes from it when the job "
                 "runs again")


class SlurmRun(Checkpointable):
    """What one SLURM job runs: one training run into its run folder. Its state lives in the
    run folder (``checkpoint.pt``), so the inherited ``checkpoint()`` -- which resubmits this
    same object -- resumes the run where it stopped."""

    def __init__(self, config: RunConfig, run_dir: str, threads: int):
        self.config, self.run_dir, self.threads = config, run_dir, threads

    def __call__(self) -> str:
        from .study import RunFolder

        slurm_environment()
        with _StopSignals() as stop:
            with process_group():
                result = execute(self.config, RunFolder(Path(self.run_dir)), self.threads,
                                 should_stop=stop.requested)
            if result.status == "stopped":
                stop.hand_over()
        return result.status


# ---------------------------------------------------------------------------------------------
# On the login node: the queue.


def queue_states() -> Optional[dict[str, str]]:
    """State of every job of this user that SLURM still lists (finished ones for a few
    minutes), by job id (``123`` or ``123_4`` for array tasks); None when squeue fails."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(),
                              "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state.split()[0] if state else ""
    return states


def cancel(job_ids: Sequence[str]) -> None:
    """Cancel jobs (best effort: the queue may be unreachable)."""
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60, check=False)


# ---------------------------------------------------------------------------------------------
# On the login node: submitting and waiting.


@dataclass
class _Job:
    run: PlannedRun
    job_id: str
    folder: str  # submitit's folder pattern (with %j)
    tasks: int
    ended_at: Optional[float] = None  # first poll that found the job gone without a result

    def stderr_tail(self) -> str:
        """The last lines of each task's stderr (rank 0 first)."""
        parts = []
        budget = STDERR_TAIL // max(1, min(self.tasks, 4))
        for task in range(min(self.tasks, 4)):
            path = JobPaths(self.folder, job_id=self.job_id, task_id=task).stderr
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {path}\n{text[-budget:]}")
        return "\n".join(parts) or "(no stderr)"


def executor(s: SlurmSpec, folder: Path, job_name: str) -> SlurmExecutor:
    """A submitit executor for jobs with the resources ``s``."""
    try:
        ex = SlurmExecutor(folder=folder, max_num_timeout=s.max_timeouts, python=s.python)
    except RuntimeError as e:
        raise LaunchError(f"launcher.kind is slurm, but this machine has no SLURM ({e}). Run "
                          "snakemake on the cluster's login node, or use profiles/local.") from None
    params: dict = {"job_name": job_name, "time": s.time_min, "nodes": s.nodes,
                    "ntasks_per_node": s.tasks_per_node or max(1, s.gpus_per_node),
                    "cpus_per_task": s.cpus_per_task, "signal_delay_s": s.signal_delay_s,
                    "array_parallelism": s.array_parallelism}
    if s.gpus_per_node:
        params["gpus_per_node"] = (f"{s.gpu_type}:{s.gpus_per_node}" if s.gpu_type
                                   else s.gpus_per_node)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(s, key):
            params[key] = getattr(s, key)
    if s.mem_gb:
        params["mem"] = f"{math.ceil(s.mem_gb * 1024)}M"
    if s.setup:
        params["setup"] = list(s.setup)
    if s.sbatch:
        params["additional_parameters"] = dict(s.sbatch)
    try:
        ex.update_parameters(**params)
    except ValueError as e:
        raise LaunchError(f"launcher.slurm: {e}") from None
    return ex


def _describe(s: SlurmSpec) -> str:
    gpus = f"{s.gpus_per_node} {s.gpu_type or 'GPU'}(s)/node, " if s.gpus_per_node else ""
    where = ", ".join(f"{k} {getattr(s, k)}" for k in ("partition", "account", "qos",
                                                        "constraint") if getattr(s, k))
    return (f"{where + ', ' if where else ''}{s.nodes} node(s), {gpus}{s.ranks} "
            f"task(s) x {s.cpus_per_task} CPU(s), {s.time_min} min")


def _adoptable(run: PlannedRun, study: Study, states: Optional[dict[str, str]]) -> Optional[_Job]:
    """The job a previous stage process submitted for ``run``, if it is still queued."""
    if states is None:
        return None
    submitted = [e for e in read_events(study.run(run.run_id)) if e["event"] == "submitted"]
    if not submitted:
        return None
    last = submitted[-1]
    if states.get(last["job_id"]) not in ACTIVE_STATES:
        return None
    return _Job(run, last["job_id"], last["folder"], last.get("tasks", 1))


def submit(runs: Sequence[PlannedRun], study: Study, launcher: LauncherSpec, stage: str,
           echo: Callable[[str], None]) -> list[_Job]:
    """Submit ``runs`` as one job array; returns their jobs."""
    s = launcher.slurm_for(stage)
    folder = (Path(s.log_dir) if s.log_dir else study.slurm_dir).absolute() / "%j"
    ex = executor(s, folder, f"cp-{study.name}-{stage}")
    threads = launcher.threads_per_run or s.cpus_per_task
    for pr in runs:  # a failed result being retried must not read as this attempt's
        run = study.run(pr.run_id)
        previous = run.load_result()
        if previous is not None:
            log_event(run, "retry", previous=previous.status)
            run.result.unlink()
    try:
        with clean_env(), ex.batch():  # no SLURM variables of an enclosing job leak in
            jobs = [ex.submit(SlurmRun(pr.config, str(study.run_dir(pr.run_id).absolute()),
                                       threads)) for pr in runs]
    except Exception as e:  # sbatch said no: a setting the user must fix
        raise LaunchError(f"SLURM refused the {stage} jobs: {str(e).strip()}\nCheck "
                          f"launcher.slurm / launcher.stages.{stage} (partition, account, "
                          "qos, GPUs) in the profile's study.yaml.") from None
    tasks = s.ranks
    out = []
    for pr, job in zip(runs, jobs, strict=True):
        log_event(study.run(pr.run_id), "submitted", job_id=job.job_id,
                  folder=str(folder), tasks=tasks, stage=stage)
        out.append(_Job(pr, job.job_id, str(folder), tasks))
    array = jobs[0].job_id.split("_")[0] if jobs else "-"
    echo(f"[{stage}] submitted SLURM job array {array}: {len(runs)} job(s), at most "
         f"{s.array_parallelism} at once; {_describe(s)}; logs in {folder.parent}")
    return out


def _outcome(job: _Job, states: Optional[dict[str, str]], study: Study,
             grace: float) -> Optional[RunResult]:
    """The run's result if it has one, a recorded failure if its job ended ``grace`` seconds
    ago without one, else None (still queued or running)."""
    result = study.run(job.run.run_id).load_result()
    if result is not None or states is None:
        return result
    state = states.get(job.job_id)
    if state in ACTIVE_STATES:
        job.ended_at = None  # requeued after it looked ended
        return None
    now = time.time()
    job.ended_at = job.ended_at or now
    if now - job.ended_at < grace:  # a result written as the job ended may show up late (NFS)
        return None
    return _record_failed(job, state, study)


def _record_failed(job: _Job, state: Optional[str], study: Study) -> RunResult:
    what = f"ended ({state})" if state else "is no longer in the queue"
    result = record_failed(job.run, f"SLURM job {job.job_id} {what} without a result; "
                           f"stderr:\n{job.stderr_tail()}", study.run(job.run.run_id))
    log_event(study.run(job.run.run_id), "job-failed", job_id=job.job_id, state=state)
    return result


@dataclass
class _Monitor:
    """Occasional lines on what the queue does while no run finishes."""

    stage: str
    echo: Callable[[str], None]
    every_s: float = 60.0
    last_line: str = ""
    last_time: float = 0.0
    unreachable_since: Optional[float] = None

    def report(self, waiting: Sequence[_Job], states: Optional[dict[str, str]]) -> None:
        now = time.time()
        if states is None:  # keep waiting: results still arrive in the run folders
            self.unreachable_since = self.unreachable_since or now
            line = (f"[{self.stage}] squeue has failed for "
                    f"{(now - self.unreachable_since) / 60:.0f} min; still waiting for "
                    f"{len(waiting)} run(s)")
            if now - self.unreachable_since >= 300 and now - self.last_time >= 300:
                self.echo(line)
                self.last_time = now
            return
        self.unreachable_since = None
        counts: dict[str, int] = {}
        for j in waiting:
            state = states.get(j.job_id, "ended").lower()
            counts[state] = counts.get(state, 0) + 1
        line = (f"[{self.stage}] waiting for {len(waiting)} run(s): " +
                ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
        if line != self.last_line and now - self.last_time >= self.every_s:
            self.echo(line)
            self.last_line, self.last_time = line, now


def wait(jobs: Sequence[_Job], study: Study, stage: str, poll_s: float, finished: ResultHook,
         echo: Callable[[str], None]) -> None:
    """Wait for ``jobs``, calling ``finished`` as each run's result comes in. A job that ends
    without a result (cancelled, killed, out of memory, crashed outside training) is recorded
    as failed, with the tail of its stderr. Interrupted, it cancels the jobs still waiting."""
    waiting = {j.run.run_id: j for j in jobs}
    monitor = _Monitor(stage, echo)
    try:
        while waiting:
            states = queue_states()
            for rid, job in list(waiting.items()):
                result = _outcome(job, states, study, grace=3 * poll_s)
                if result is not None:
                    del waiting[rid]
                    finished(job.run, result)
            if waiting:
                monitor.report(list(waiting.values()), states)
                time.sleep(poll_s)
    except BaseException:
        if waiting:
            cancel([j.job_id for j in waiting.values()])
            echo(f"[{stage}] stopped: cancelled {len(waiting)} SLURM job(s)")
        raise


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A SIGTERM to the waiting stage process (snakemake stopping) raises KeyboardInterrupt,
    so its jobs are cancelled instead of left training."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupt(signum: int, frame: Optional[FrameType]) -> NoReturn:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_jobs(runs: Sequence[PlannedRun], study: Study, launcher: LauncherSpec, stage: str,
             finished: ResultHook, echo: Callable[[str], None]) -> None:
    """Train ``runs`` (none has a result) on SLURM: adopt the jobs a killed stage process left
    queued, submit the rest as one job array, and wait for all of them."""
    with _sigterm_as_interrupt():
        states = queue_states()
        adopted = [j for j in (_adoptable(pr, study, states) for pr in runs) if j is not None]
        if adopted:
            echo(f"[{stage}] {len(adopted)} run(s) still queued from an earlier session: "
                 "waiting for those jobs")
        taken = {j.run.run_id for j in adopted}
        fresh = [pr for pr in runs if pr.run_id not in taken]
        jobs = adopted + (submit(fresh, study, launcher, stage, echo) if fresh else [])
        wait(jobs, study, stage, launcher.slurm_for(stage).poll_s, finished, echo)


__all__ = ["SlurmRun", "queue_states", "run_jobs", "submit", "wait"]
