"""Data parallelism across processes: which rank this process is, the process group's set-up
from the environment (SLURM tasks through submitit, or torchrun-style variables), and local
multi-process runs on one machine (gloo on CPU).

A data-parallel run keeps the run's global batch: rank r of W trains on rows r, r+W, ... of
every step's batch, so the effective batch, and with it every transfer rule that depends on
it, is that of a single-process run (`cp.train`).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from .config import RunConfig, RunResult, load_result


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of this process: from the initialised process group, else from the
    RANK / WORLD_SIZE variables, else (0, 1)."""
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0 does, the others train only)."""
    return rank_and_world()[0] == 0


def default_backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def process_group(backend: Optional[str] = None) -> Iterator[tuple[int, int]]:
    """Join the process group described by the environment (MASTER_ADDR, MASTER_PORT, RANK,
    WORLD_SIZE) for the duration of the block, when WORLD_SIZE > 1; yields (rank, world)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        yield 0, 1
        return
    import torch
    import torch.distributed as dist

    backend = backend or default_backend()
    if backend == "nccl":
        # One GPU per process: submitit's TorchDistributedEnvironment restricts
        # CUDA_VISIBLE_DEVICES to it; otherwise pick the local rank's.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    try:
        yield dist.get_rank(), dist.get_world_size()
    finally:
        dist.destroy_process_group()


def slurm_environment() -> None:
    """Export the torch.distributed variables of this SLURM task (one task per rank) when the
    job has several tasks; submitit derives them from SLURM's own variables."""
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:
        TorchDistributedEnvironment().export(overwrite=True)


# ---------------------------------------------------------------------------------------------
# Several processes on this machine (tests, and trying data parallelism without a cluster).


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rank_main(rank: int, world: int, port: int, cfg: RunConfig, out_dir: str,
                     threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch

    torch.set_num_threads(threads)
    from .train import train

    with process_group("gloo"):
        train(cfg, out_dir)


def train_local(cfg: RunConfig, out_dir: Path | str, world: int, threads: int = 1) -> RunResult:
    """Train ``cfg`` data-parallel in ``world`` processes on this machine (gloo backend, CPU),
    each with ``threads`` torch threads; returns the result rank 0 wrote to ``out_dir``."""
    import torch.multiprocessing as mp

    mp.start_processes(_local_rank_main, args=(world, _free_port(), cfg, str(out_dir), threads),
                       nprocs=world, join=True, start_method="spawn")
    result = load_result(Path(out_dir))
    if result is None:
        raise RuntimeError(f"the {world}-process run left no result in {out_dir}")
    return result
