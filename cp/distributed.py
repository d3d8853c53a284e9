"""Data parallelism across processes: which rank this process is, and the process group's
set-up from the environment (SLURM tasks through submitit, or torchrun-style variables).
`cp.execute.train_local` runs several ranks on one machine (gloo on CPU).

A data-parallel run keeps the run's global batch: rank r of W trains on rows r, r+W, ... of
every step's batch, so the effective batch, and with it every transfer rule that depends on
it, is that of a single-process run (`cp.train`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional


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
