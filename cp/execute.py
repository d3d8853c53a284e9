"""One run, executed into its run folder: what the local launcher, the SLURM jobs and
``cpt train`` all call. Training happens in `cp.train`; around it, this module keeps the run's
event log (a line per start, finish, resume and submission: the audit trail that tells a run
trained twice from one trained once), turns a crash into a recorded ``failed`` result, and runs
a data-parallel run in local processes (gloo, for tests and for trying it without a cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .config import PlannedRun, RunConfig, RunResult
from .study import CorruptFile, RunFolder, storage_error

ResultHook = Callable[[PlannedRun, RunResult], None]
"""Called with each planned run and its result as the result comes in."""
ProgressFn = Callable[[dict[str, Any]], None]
"""Receives a run's progress records ({step, total_steps, train_loss | val_loss})."""


class LaunchError(RuntimeError):
    """Runs cannot be launched as configured (no SLURM here, a partition SLURM refuses, local
    workers that die before starting anything): a setting or an environment the user must
    fix, not a failed run."""


def log_event(run: RunFolder, event: str, **info: Any) -> None:
    """Append one line to ``run``'s event log."""
    run.append_event({"event": event, "time": time.time(), "host": socket.gethostname(),
                      "pid": os.getpid(), "run_id": run.run_id or run.path.name, **info})


def read_events(folder: RunFolder) -> list[dict]:
    """The run's event log, oldest first (empty if it has none; see `RunFolder.read_events`)."""
    return folder.read_events()


def record_failed(pr: PlannedRun, reason: str, folder: RunFolder) -> RunResult:
    """Record ``pr`` as failed (a result like any other, with the config it failed with) and
    return that result."""
    result = RunResult.failed(pr.run_id, reason, pr.config.scale.steps)
    with contextlib.suppress(CorruptFile):
        if folder.read_config() is not None:
            folder.write_result(result)
            return result
    folder.write_config(pr.run_id, pr.config.to_dict(), pr.config.resolved())
    folder.write_result(result)
    return result


def execute(cfg: RunConfig, folder: RunFolder | Path, threads: int = 0,
            should_stop: Optional[Callable[[], bool]] = None,
            progress: Optional[ProgressFn] = None) -> RunResult:
    """Train one run into its folder; an exception becomes a recorded ``failed`` result.
    ``should_stop`` asks the run to stop at a checkpoint (see `cp.train.train`); ``progress``
    receives its progress records. In a data-parallel process group every rank calls this;
    rank 0 alone writes."""
    from .distributed import is_writer
    from .train import train

    folder = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    if threads:
        cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                   threads=threads))
    writer = is_writer()

    def on_log(rec: dict[str, Any]) -> None:
        if writer and rec.get("event") == "resumed":
            log_event(folder, "resumed", step=rec["step"])
        if progress is not None:
            progress(rec)

    if writer:
        log_event(folder, "start")
    try:
        result = train(cfg, folder, log=on_log, should_stop=should_stop)
    except Exception as e:  # a crash is a result, not the end of the study ...
        fault = storage_error(e, folder.path)
        if fault is not None:  # ... but a full disk or a read-only folder is not the run's
            raise fault from None
        tail = "".join(traceback.format_exception(e))[-2000:]
        result = RunResult.failed(cfg.run_id(), f"{type(e).__name__}: {e}\n{tail}",
                                  cfg.scale.steps)
        if writer:
            folder.write_result(result)
    if writer:
        log_event(folder, "finish", status=result.status,
                  **({"step": result.steps} if result.status == "stopped" else {}))
    return result


# ---------------------------------------------------------------------------------------------
# Several data-parallel processes on this machine.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rank_main(rank: int, world: int, port: int, cfg: RunConfig, folder: str,
                     threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    from .distributed import process_group
    from .train import train

    torch.set_num_threads(threads)
    with process_group("gloo"):
        train(cfg, folder)


def train_local(cfg: RunConfig, folder: RunFolder | Path | str, world: int,
                threads: int = 1) -> RunResult:
    """Train ``cfg`` data-parallel in ``world`` processes on this machine (gloo backend, CPU),
    each with ``threads`` torch threads; returns the result rank 0 wrote into ``folder``."""
    import torch.multiprocessing as mp

    folder = folder if isinstance(folder, RunFolder) else RunFolder(Path(folder))
    mp.start_processes(_local_rank_main, args=(world, _free_port(), cfg, str(folder.path),
                                               threads),
                       nprocs=world, join=True, start_method="spawn")
    result = folder.load_result()
    if result is None:
        raise RuntimeError(f"the {world}-process run left no result in {folder.path}")
    return result
