"""Typed configs of a training run, and its result. Torch-free: planning and describing runs
(CLI, Snakemake rules, SLURM submission) imports this without paying for torch.

A `RunConfig` is everything that determines a run's numbers; its id is a hash of the run as
resolved (model shape, every group's settings, schedule, data, seed), so two specs that resolve
to the same run share it and a finished run is never trained again. `RuntimeConfig` (device,
compile, checkpoint cadence) changes how a run executes, not what it computes, and is not hashed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

from .data import DataConfig
from .scaling import (
    GroupSettings,
    HPs,
    Multipliers,
    RuleTable,
    Scale,
    build_table,
    resolve,
)
from .schedule import ScheduleConfig


@dataclass
class ArchConfig:
    """Architecture choices that stay fixed across the scales of a study."""

    head_dim: int = 32
    """Dimension of one attention head; the number of heads is width / head_dim."""
    mlp: Literal["swiglu", "gelu"] = "swiglu"
    """MLP type: SwiGLU (gate, up, down) or GELU (up, down)."""
    mlp_ratio: float = 3.0
    """MLP hidden size as a multiple of the width."""
    qk_norm: bool = True
    """Per-head RMSNorm on queries and keys (one head_dim-sized gain shared by all heads)."""
    norm_eps: float = 1e-6
    """Epsilon inside RMSNorm."""
    rope_base: float = 10000.0
    """RoPE base frequency."""
    z_loss: float = 0.0
    """Coefficient of the z-loss (mean squared log-partition function); 0 turns it off."""


@dataclass
class ModelConfig:
    """Everything needed to build one model."""

    width: int
    depth: int
    seq_len: int
    vocab_size: int = 256
    arch: ArchConfig = field(default_factory=ArchConfig)

    @property
    def n_heads(self) -> int:
        return self.width // self.arch.head_dim

    @property
    def mlp_hidden(self) -> int:
        return round(self.arch.mlp_ratio * self.width)


def model_groups(arch: ArchConfig) -> list[str]:
    """The parameter groups a model with this architecture has."""
    from .scaling import GROUPS

    skip = set()
    if arch.mlp != "swiglu":
        skip.add("mlp_gate")
    if not arch.qk_norm:
        skip |= {"qk_norm_q", "qk_norm_k"}
    return [g for g in GROUPS if g not in skip]


def count_params(cfg: ModelConfig) -> int:
    """Parameter count without building the model."""
    d, h, v = cfg.width, cfg.mlp_hidden, cfg.vocab_size
    n_mlp_in = 2 if cfg.arch.mlp == "swiglu" else 1
    block = 4 * d * d + (n_mlp_in + 1) * d * h + 2 * d
    block += 2 * cfg.arch.head_dim if cfg.arch.qk_norm else 0
    return 2 * v * d + cfg.depth * block + d


def flops_per_token(cfg: ModelConfig) -> float:
    """Training FLOPs per token: 6 per matmul parameter plus attention (as nanoGPT counts)."""
    n = count_params(cfg) - cfg.vocab_size * cfg.width  # the embedding lookup is not a matmul
    return 6 * n + 12 * cfg.depth * cfg.width * cfg.seq_len


Exponent = Union[float, str]


def _flat(obj: Any) -> dict[str, Any]:
    """Fields of a flat dataclass (cheaper than dataclasses.asdict, which deep-copies)."""
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


@functools.lru_cache(maxsize=256)
def _build_table_cached(key: str) -> RuleTable:
    # Tables are immutable; planning builds the same few for thousands of runs.
    name, alpha, base, rules = json.loads(key)
    return build_table(name, alpha=alpha, base=base, rules=rules)


@dataclass
class ParamConfig:
    """Which parameterisation (rule table) scales the HPs, and any exponents overridden."""

    name: str = "completed_p"
    """A built-in table (sp, mup, depth_mup, completep, completed_p) or a new name together
    with ``base``."""
    alpha: float | None = None
    """Residual-branch exponent (in [0.5, 1]); default: the table's own (1 for completep and
    completed_p, 1/2 for depth_mup)."""
    base: str | None = None
    """Built-in table to start from when ``name`` is a new table."""
    rules: dict[str, dict[str, dict[str, Exponent]]] = field(default_factory=dict)
    """Exponent overrides: group or group set -> HP kind -> axis (width, depth, batch, horizon,
    rho) -> exponent (a number or an expression in alpha such as "alpha - 1")."""

    def build(self) -> RuleTable:
        key = json.dumps([self.name, self.alpha, self.base, self.rules], sort_keys=True,
                         default=str)
        return _build_table_cached(key)


@dataclass
class TrainConfig:
    """How a run trains and is measured (these change its numbers, so they are hashed)."""

    evals: int = 20
    """Number of validation evaluations, evenly spaced; the last one is at the final step."""
    eval_sequences: int = 64
    """Validation sequences per evaluation (the same ones for every run of a study)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """fp32, or bf16 autocast (for GPUs; parameters and Adam state stay fp32)."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    divergence_margin: float = 3.0
    """A run has diverged when its smoothed train loss rises this many nats above its best (or
    a loss is NaN/inf); it then stops and reports diverged=True."""
    log_every: int = 10
    """Steps between reads of the train loss (each read syncs a GPU)."""


@dataclass
class RuntimeConfig:
    """How a run executes; does not change its numbers (not part of its id)."""

    device: str = "auto"
    """``auto`` (cuda when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    compile: bool = False
    """torch.compile the model (worth it on GPUs only)."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps (0: time-based only)."""
    checkpoint_seconds: float = 600.0
    """Save a checkpoint when this much wall time passed since the last one (0: never)."""
    keep_checkpoint: bool = False
    """Keep the final checkpoint (the trained weights) after a run completes."""


@dataclass
class RunConfig:
    """One training run: a model at one scale, with HPs transferred from the base scale."""

    scale: Scale
    """Width, depth, batch, tokens and seq_len of this run."""
    base_scale: Scale
    """The scale at which ``hps`` and ``multipliers`` are given (the proxy)."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    parameterisation: ParamConfig = field(default_factory=ParamConfig)
    hps: HPs = field(default_factory=HPs)
    multipliers: Multipliers = field(default_factory=Multipliers)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def table(self) -> RuleTable:
        return self.parameterisation.build()

    def settings(self) -> list[GroupSettings]:
        """Resolved settings of every (group, layer) of this run's model."""
        return resolve(self.table(), self.base_scale, self.scale, self.hps, self.multipliers,
                       groups=model_groups(self.arch))

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(width=self.scale.width, depth=self.scale.depth,
                           seq_len=self.scale.seq_len, vocab_size=vocab_size, arch=self.arch)

    def resolved(self) -> dict[str, Any]:
        """What determines this run's numbers, fully resolved (hashed into the run id)."""
        return {
            "scale": _flat(self.scale),
            "arch": _flat(self.arch),
            "settings": [s.as_dict() for s in self.settings()],
            "schedule": _flat(self.schedule),
            "data": _flat(self.data),
            "train": _flat(self.train),
            "seed": self.seed,
        }

    def describe(self) -> dict[str, Any]:
        """The resolved settings in the stable format of ``cpt describe --json``."""
        def scale(s: Scale) -> dict[str, int]:
            return {k: getattr(s, k) for k in ("width", "depth", "batch", "tokens", "seq_len")}

        table = self.table()
        return {"parameterisation": table.name, "alpha": table.alpha,
                "scale": scale(self.scale), "base_scale": scale(self.base_scale),
                "groups": [s.as_dict() for s in self.settings()]}

    def run_id(self) -> str:
        blob = json.dumps(self.resolved(), sort_keys=True, default=repr)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(OmegaConf.structured(cls), d)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]


Status = Literal["completed", "diverged", "failed", "stopped"]


@dataclass
class RunResult:
    """What a run produced. A diverged or failed run is a result too."""

    run_id: str
    status: Status
    """completed, diverged (stopped early on NaN/blow-up), failed (crashed), or stopped
    (interrupted on request; resumable from its checkpoint)."""
    diverged: bool
    reason: str | None
    """Why a run diverged or failed."""
    steps: int
    """Steps done."""
    total_steps: int
    tokens: int
    """Training tokens seen."""
    final_val_loss: float
    """Validation loss at the last evaluation (NaN if the run diverged or failed)."""
    eval_curve: list[dict[str, float]] = field(default_factory=list)
    """[{step, tokens, val_loss}] at every evaluation."""
    train_curve: list[list[float]] = field(default_factory=list)
    """[[step, mean train loss over the last log interval]]."""
    tokens_per_s: float = 0.0
    """Training throughput (evaluation and checkpoint time excluded)."""
    wall_s: float = 0.0
    n_params: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    def best_val_loss(self) -> float:
        losses = [e["val_loss"] for e in self.eval_curve if math.isfinite(e["val_loss"])]
        return min(losses) if losses else math.nan

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunResult:
        return cls(**d)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=True) + "\n")
    os.replace(tmp, path)


RESULT_FILE = "result.json"
CONFIG_FILE = "config.json"


def load_result(run_dir: Path) -> RunResult | None:
    """The run's recorded result, or None if it has none yet (stopped runs count as none)."""
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        return None
    result = RunResult.from_dict(json.loads(path.read_text()))
    return None if result.status == "stopped" else result
