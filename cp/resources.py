"""The resources of a SLURM job (``launcher.slurm`` in a spec). Torch- and submitit-free: the
schema and its validation import it; `cp.slurm` turns it into sbatch options."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class SlurmSpec:
    """SLURM resources of each job (one job per run; set by profiles/slurm). Keys left unset
    take the cluster's defaults."""

    partition: Optional[str] = None
    """Partition (``--partition``); unset: the cluster's default partition."""
    account: Optional[str] = None
    """Account charged for the jobs (``--account``)."""
    qos: Optional[str] = None
    """Quality of service (``--qos``)."""
    constraint: Optional[str] = None
    """Node features the jobs need (``--constraint``, e.g. ``a100``)."""
    gpus_per_node: int = 0
    """GPUs per node (``--gpus-per-node``); 0: a CPU job."""
    gpu_type: Optional[str] = None
    """GPU type where the cluster names them in its GRES (``--gpus-per-node=TYPE:N``)."""
    nodes: int = 1
    """Nodes per run (a multi-node data-parallel run when > 1)."""
    tasks_per_node: int = 0
    """Processes per node, each one data-parallel rank; 0: one per GPU (1 without GPUs)."""
    cpus_per_task: int = 1
    """CPU cores per process; also its torch threads (unless launcher.threads_per_run)."""
    mem_gb: Optional[float] = None
    """Memory per node in GB (``--mem``); unset: the cluster's default."""
    time_min: int = 60
    """Time limit of a job in minutes; a run that needs longer is requeued from its
    checkpoint (see max_timeouts)."""
    signal_delay_s: int = 120
    """Seconds before the time limit at which the job is signalled to checkpoint and
    requeue itself."""
    max_timeouts: int = 3
    """How many times a run that hits the time limit is requeued (preemptions are not
    counted)."""
    array_parallelism: int = 64
    """Jobs of one batch running at once (the job array's ``%`` cap)."""
    sbatch: dict[str, Any] = field(default_factory=dict)
    """More sbatch options, flag name -> value (``{reservation: x, exclusive: true}``)."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run in each job before training (``module load ...``, ``source
    venv/bin/activate``)."""
    python: Optional[str] = None
    """Command that starts Python in a job; unset: the interpreter running the stage."""
    log_dir: Optional[str] = None
    """Folder of the jobs' scripts and logs (shared with the compute nodes); unset:
    ``slurm/`` inside the study folder."""
    poll_s: float = 15.0
    """Seconds between checks of the queue and of the run folders while runs train."""
