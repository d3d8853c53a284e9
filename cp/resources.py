"""Where runs execute: the ``launcher`` section of a spec and the resources of a SLURM job
(``launcher.slurm``), with their checks. Torch- and submitit-free: the spec imports it;
`cp.launch` and `cp.slurm` act on it."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from .schema import Problems, SpecError, coerce, suggest

# Allowed range of each numeric SLURM key: (lowest value, what the message says).
_SLURM_RANGES = {"gpus_per_node": (0, "an integer >= 0"), "nodes": (1, "an integer >= 1"),
                 "tasks_per_node": (0, "an integer >= 0 (0: one per GPU)"),
                 "cpus_per_task": (1, "an integer >= 1"), "time_min": (1, "minutes >= 1"),
                 "signal_delay_s": (0, "seconds >= 0"), "max_timeouts": (0, "an integer >= 0"),
                 "array_parallelism": (1, "an integer >= 1")}


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
    gpu_mem_gb: Optional[float] = None
    """Memory of one GPU in GB (2^30 bytes: 80 for an 80 GB H100 or A100). Set, ``cpt plan``,
    ``cpt spec check`` and every stage refuse a model whose estimated memory per GPU
    (`cp.memory`: parameters, gradients, AdamW state, activations) does not fit in it, before
    anything is submitted; unset: no check (GRES type names differ between clusters, so it is
    not guessed from ``gpu_type``)."""
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

    @property
    def ranks(self) -> int:
        """Processes of one job (tasks per node x nodes), each a data-parallel rank."""
        return (self.tasks_per_node or max(1, self.gpus_per_node)) * self.nodes

    def check(self, at: str, problems: Problems, keys: Optional[Sequence[str]] = None) -> None:
        """The keys in ``keys`` (default: all); a per-stage override checks the ones it sets,
        merged over the shared section."""
        keys = list(keys) if keys is not None else [f.name for f in dataclasses.fields(self)]
        for k, (lo, allowed) in _SLURM_RANGES.items():
            if k in keys:
                problems.at_least(f"{at}.{k}", getattr(self, k), lo, allowed)
        for k in ("mem_gb", "gpu_mem_gb", "poll_s"):
            if k in keys and getattr(self, k) is not None:
                problems.positive(f"{at}.{k}", getattr(self, k))
        if ("signal_delay_s" in keys or "time_min" in keys) and isinstance(self.time_min, int) \
                and isinstance(self.signal_delay_s, int) and self.time_min >= 1 and \
                self.signal_delay_s >= self.time_min * 60:
            problems(f"{at}.signal_delay_s", f"{self.signal_delay_s} s is not within the "
                     f"time limit of {self.time_min} min (time_min): a job would be told to "
                     "checkpoint as soon as it starts", f"signal_delay_s < {self.time_min * 60}")


@dataclass
class LauncherSpec:
    """Where runs execute (usually set by the Snakemake profile)."""

    kind: Literal["inline", "local", "slurm"] = "local"
    """``inline``: one after another in the stage's process; ``local``: a process pool (one
    run too: a run that kills its process never takes the stage with it);
    ``slurm``: one SLURM job per run (job arrays through submitit)."""
    workers: int = 0
    """Runs in parallel (local); 0: one per CPU core."""
    threads_per_run: int = 0
    """torch threads per run; 0: CPU cores / workers."""
    retry_failed: bool = False
    """Train runs recorded as failed again (e.g. after fixing what made them crash)."""
    slurm: SlurmSpec = field(default_factory=SlurmSpec)
    """Job resources when kind is ``slurm``."""
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per-stage SLURM resources merged over ``slurm``: stage (sweep, search, target) ->
    keys of ``slurm`` (``{target: {gpus_per_node: 8, nodes: 2}}``)."""

    def slurm_for(self, stage: str) -> SlurmSpec:
        """The SLURM resources of ``stage``'s jobs: ``slurm`` with the stage's overrides."""
        changes = self.stages.get(stage) or {}
        if not changes:
            return self.slurm
        problems = Problems()
        merged = coerce({**dataclasses.asdict(self.slurm), **changes}, SlurmSpec,
                        f"launcher.stages.{stage}", problems)
        if problems:
            raise SpecError("<launcher>", problems.items)
        return SlurmSpec(**merged)

    def ranks(self, stage: str) -> int:
        """Data-parallel ranks of one run of ``stage``: its SLURM job's tasks; 1 for the local
        launchers (one process per run)."""
        return self.slurm_for(stage).ranks if self.kind == "slurm" else 1

    def gpu_mem_gb(self, stage: str) -> Optional[float]:
        """The GPU memory ``stage``'s jobs have, if the launcher names it (SLURM only)."""
        return self.slurm_for(stage).gpu_mem_gb if self.kind == "slurm" else None

    def check(self, at: str, problems: Problems, launched_stages: Sequence[str] = ()) -> None:
        """``launched_stages``: the stages whose runs go through the launcher (the keys that
        ``stages`` may have)."""
        for k in ("workers", "threads_per_run"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 0, "an integer >= 0 (0: automatic)")
        self.slurm.check(f"{at}.slurm", problems)
        hints = typing.get_type_hints(SlurmSpec)
        for stage, keys in self.stages.items():
            key = f"{at}.stages.{stage}"
            if stage not in launched_stages:
                problems(key, f"{stage!r} is not a stage that trains runs" +
                         suggest(stage, launched_stages), ", ".join(launched_stages))
                continue
            if not isinstance(keys, dict):
                problems(key, f"expected a mapping of launcher.slurm keys, got {keys!r}",
                         ", ".join(hints))
                continue
            before = len(problems.items)
            checked = {}
            for k, v in keys.items():
                if problems.choice(f"{key}.{k}", k, hints, "key"):
                    checked[k] = coerce(v, hints[k], f"{key}.{k}", problems)
            if len(problems.items) == before:  # well typed: check the merged values
                merged = SlurmSpec(**{**dataclasses.asdict(self.slurm), **checked})
                merged.check(key, problems, keys=list(checked))
