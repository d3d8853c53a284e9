"""Study specs: the YAML schema (typed OmegaConf structured configs), its validation, and the
expansion of a spec into concrete runs.

A spec is checked completely before any work: every problem is reported with the file, the key
path, the bad value and what is allowed (unknown keys get a did-you-mean). `load_spec` raises
`SpecError` carrying all of them; the CLI prints them without a traceback.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .config import (
    ArchConfig,
    ParamConfig,
    RunConfig,
    RuntimeConfig,
    TrainConfig,
)
from .coord import CoordConfig
from .data import DataConfig
from .resources import SlurmSpec
from .scaling import HPs, Multipliers, Scale
from .schedule import ScheduleConfig
from .search.trrs import TRRSConfig
from .validate import Problem, SpecError, coerce, semantic_checks


@dataclass
class ModelSpec:
    """One named model of the study: where it sits on the transfer axes."""

    width: int
    """Model width d_model (a multiple of arch.head_dim)."""
    depth: int
    """Number of transformer blocks."""
    batch: int
    """Sequences per optimiser step (global batch)."""
    tokens: int
    """Training tokens (the horizon); steps = tokens / (batch * seq_len)."""
    seq_len: int = 128
    """Tokens per sequence."""

    def scale(self) -> Scale:
        return Scale(self.width, self.depth, self.batch, self.tokens, self.seq_len)


@dataclass
class TableSpec:
    """A named rule table derived from a built-in one."""

    base: str = "completed_p"
    """Built-in table to start from."""
    alpha: Optional[float] = None
    """Residual-branch exponent (default: the base table's)."""
    rules: dict[str, dict[str, dict[str, Union[float, str]]]] = field(default_factory=dict)
    """Exponent overrides: group or group set -> HP kind -> axis -> exponent."""


@dataclass
class CheckSpec(CoordConfig):
    """The coordinate check, run first as the study's guard: a failing parameterisation stops
    the study before any sweep."""

    enabled: bool = True
    """Run the check (and stop the study when it fails)."""


@dataclass
class SweepBlock:
    """An extra transfer sweep with its own tables, axes and grid (e.g. an ablation of one
    rule: the HP it governs, along the axis it is about, with and without the rule)."""

    name: str
    """Block name (in tables and the report)."""
    parameterisations: list[str]
    """Tables compared (built-in or from ``tables``)."""
    axes: dict[str, list[int]]
    """``width``, ``depth``, ``batch`` or ``tokens`` -> values of that field of the base model
    (include the base value to have it in the curves)."""
    grid: dict[str, list[float]]
    """HP kind -> base values swept at every axis value (others stay at the spec's ``hps``).
    ``group.kind`` sweeps one group's (or group set's) own base value, e.g.
    ``qk_norms.eps: [1.0e-6, 1.0e-4]`` for the rule of the QK-norm gains alone."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of every point."""


@dataclass
class SweepSpec:
    """Global HP grids at the base model, and the same grid along the transfer axes."""

    grid: dict[str, list[float]] = field(default_factory=dict)
    """HP kind -> values at the base scale (e.g. ``lr: [0.002, 0.004, 0.008]``); the full
    product is swept at the base model. Empty: no sweep, the spec's ``hps`` are the optimum.
    ``group.kind`` (``qk_norms.eps``) sweeps one group's or group set's own base value."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of every sweep point (losses are averaged over them)."""
    parameterisations: list[str] = field(default_factory=list)
    """Tables swept besides the study's own (e.g. ``[sp]``), for side-by-side transfer curves
    and for arms that use them."""
    axes: dict[str, list[int]] = field(default_factory=dict)
    """Transfer axes: ``width``, ``depth``, ``batch`` or ``tokens`` -> values of that field
    of the base model (the other fields stay). Each value gets the ``axes_kinds`` grid."""
    axes_kinds: list[str] = field(default_factory=lambda: ["lr"])
    """Grid kinds varied along the axes (others stay at the spec's ``hps``)."""
    extra: list[SweepBlock] = field(default_factory=list)
    """More transfer sweeps, each with its own tables, axes and grid (ablations)."""


@dataclass
class SelectSpec:
    """How the global optimum is picked from the base-model sweep."""

    method: Literal["argmin", "fit"] = "fit"
    """``argmin`` of the seed-averaged loss, or ``fit``: the argmin, refined for each kind by a
    quadratic fit of loss against log2(value) through the argmin and its grid neighbours."""


@dataclass
class SearchSpec:
    """Per-module search at the base model, starting from the global optimum."""

    enabled: bool = True
    """Run the search (arms with ``multipliers: search`` need it)."""
    algorithm: Literal["trrs", "random", "tpe", "cmaes"] = "trrs"
    """``trrs`` (trust-region random search, the paper's), ``random``, or Optuna's ``tpe`` /
    ``cmaes``."""
    kinds: list[str] = field(default_factory=lambda: ["lr"])
    """HP kinds that get per-module multipliers (``multiplier`` on ``branch_out`` is the
    residual-branch multiplier)."""
    groups: list[str] = field(default_factory=list)
    """Module groups (types) searched, group sets allowed; empty: every group of the model.
    Groups where a kind cannot act (init_std of a norm gain, a kind whose base value is 0)
    are left out."""
    groups_per_kind: dict[str, list[str]] = field(default_factory=dict)
    """Kind -> groups, for kinds that search other groups than ``groups`` (e.g.
    ``multiplier: [branch_out]``)."""
    per_layer: bool = True
    """Also search one factor per layer and kind (the paper's type x depth factorisation)."""
    log2_radius: float = 2.0
    """Multipliers are searched within 2^-radius .. 2^radius of the global optimum."""
    trials: int = 16
    """Budget: training runs of the base model, re-evaluations inside the search included
    (the final re-evaluation on ``reeval_seeds`` is not)."""
    batch: int = 2
    """Trials in flight at once."""
    reeval_seeds: list[int] = field(default_factory=lambda: [1, 2])
    """Fresh seeds on which the recommended point and the global optimum are re-evaluated at
    the end (the per-module gain at the proxy, with its seed spread)."""
    seed: int = 0
    """Seed of the search algorithm."""
    trrs: TRRSConfig = field(default_factory=TRRSConfig)
    """Settings of trust-region random search."""


@dataclass
class ArmSpec:
    """One way of setting the targets' HPs."""

    name: str
    """Arm name (in tables and plots)."""
    hps: Literal["global", "spec"] = "global"
    """``global``: the selected global optimum; ``spec``: the spec's ``hps`` as written."""
    multipliers: Literal["none", "search"] = "none"
    """``search``: the per-module search's best multipliers; ``none``: all 1."""
    parameterisation: Optional[str] = None
    """Table that transfers this arm's HPs (default: the study's)."""


def _default_arms() -> list[ArmSpec]:
    return [ArmSpec(name="global"), ArmSpec(name="per_module", multipliers="search")]


@dataclass
class TargetsSpec:
    """Which models the transferred HPs are trained on."""

    models: list[str] = field(default_factory=list)
    """Model names; empty: every model but the base."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of every (target, arm)."""


@dataclass
class LauncherSpec:
    """Where runs execute (usually set by the Snakemake profile)."""

    kind: Literal["inline", "local", "slurm"] = "local"
    """``inline``: one after another in the stage's process; ``local``: a process pool;
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
        problems: list[Problem] = []
        merged = coerce({**dataclasses.asdict(self.slurm), **changes}, SlurmSpec,
                        f"launcher.stages.{stage}", problems)
        if problems:
            raise SpecError("<launcher>", problems)
        return SlurmSpec(**merged)


@dataclass
class TrackingSpec:
    """MLflow tracking: a view of the study folder (which stays the source of truth). A store
    that is down never fails a stage; ``cpt sync`` fills it in later."""

    enabled: bool = True
    """Log every stage and training run to MLflow."""
    uri: Optional[str] = None
    """Tracking URI (``http://host:5000``, ``sqlite:///path.db``...). Unset: the
    MLFLOW_TRACKING_URI environment variable, else ``sqlite:///<study folder>/mlflow.db``."""
    experiment: Optional[str] = None
    """Experiment name (default: the study name)."""


@dataclass
class Spec:
    """A scaling study."""

    name: str = ""
    """Study name (default: the spec file's stem); names the results folder."""
    description: str = ""
    """Free text shown in reports."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training data."""
    arch: ArchConfig = field(default_factory=ArchConfig)
    """Architecture shared by every model of the study."""
    models: dict[str, ModelSpec] = field(default_factory=dict)
    """Named models (at least the base, usually ``proxy`` and ``target``)."""
    base: str = "proxy"
    """The model at whose scale ``hps`` and ``multipliers`` are given (and tuned)."""
    parameterisation: ParamConfig = field(default_factory=ParamConfig)
    """The rule table that transfers HPs from the base to other scales."""
    tables: dict[str, TableSpec] = field(default_factory=dict)
    """More named tables (for side-by-side sweeps, arms and ablations): name -> {base,
    alpha, rules}. Usable wherever a parameterisation name is."""
    hps: HPs = field(default_factory=HPs)
    """Base HPs at the base model's scale."""
    multipliers: Multipliers = field(default_factory=Multipliers)
    """Per-module multipliers (type x depth) on top of the base HPs."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Learning-rate schedule (fractions of the run)."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Evaluation, precision, divergence detection."""
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    """Device, compile, checkpoint cadence (not part of run ids)."""
    seed: int = 0
    """Seed of initialisation and data order."""
    check: CheckSpec = field(default_factory=CheckSpec)
    """Stage 1: the coordinate check guard."""
    sweeps: SweepSpec = field(default_factory=SweepSpec)
    """Stage 2: global HP grid at the base model, and transfer sweeps along the axes."""
    select: SelectSpec = field(default_factory=SelectSpec)
    """Stage 3: picking the global optimum."""
    search: SearchSpec = field(default_factory=SearchSpec)
    """Stage 4: per-module search at the base model."""
    targets: TargetsSpec = field(default_factory=TargetsSpec)
    """Stage 5-6: models the HPs are transferred to and trained at."""
    arms: list[ArmSpec] = field(default_factory=_default_arms)
    """Stage 5-6: the HP sets compared at each target."""
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    """Where runs execute."""
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    """Where stages and runs are logged (MLflow)."""

    def target_models(self) -> list[str]:
        return self.targets.models or [m for m in self.models if m != self.base]

    def run_config(self, model: str, **changes: Any) -> RunConfig:
        """The RunConfig of model ``model`` with this spec's HPs transferred from the base.
        ``changes`` replace RunConfig fields (e.g. ``seed=1``, ``hps=...``)."""
        if model not in self.models:
            raise KeyError(f"no model {model!r} in spec {self.name!r}; models: "
                           f"{', '.join(self.models)}")
        cfg = RunConfig(
            scale=self.models[model].scale(),
            base_scale=self.models[self.base].scale(),
            arch=self.arch, parameterisation=self.parameterisation, hps=self.hps,
            multipliers=self.multipliers, schedule=self.schedule, data=self.data,
            train=self.train, seed=self.seed, runtime=self.runtime,
        )
        return dataclasses.replace(cfg, **changes)


# ---------------------------------------------------------------------------------------------
# Loading.


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError(str(path), [Problem("", f"cannot read the file: {e.strerror}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(str(path), [Problem("", f"not valid YAML: {where}"
                                            f"{getattr(e, 'problem', e)}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(str(path), [Problem("", "the spec must be a mapping of keys to values")])
    # OmegaConf resolves ${...} interpolations between keys.
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # type: ignore
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise SpecError(str(path), [Problem(str(key), f"cannot resolve: {e.msg}")]) from None


def validate(raw: dict, file: str = "<spec>", schema: type = Spec) -> dict:
    """Check a raw spec mapping; return it normalised, or raise SpecError with every problem."""
    problems: list[Problem] = []
    normalised = coerce(raw, schema, "", problems)
    if not problems:
        semantic_checks(normalised, problems)
    if problems:
        raise SpecError(file, problems)
    return normalised


def build_spec(raw: dict, file: str = "<spec>") -> Spec:
    """A typed Spec from a raw mapping (validated first)."""
    from omegaconf import OmegaConf

    normalised = validate(raw, file)
    spec: Spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Spec), normalised))
    if not spec.name:
        spec.name = Path(file).stem
    return spec


def load_spec(path: str | Path, overrides: Optional[list[str]] = None) -> Spec:
    """Load and validate a spec file. ``overrides`` are dotlist entries (``hps.lr=0.01``)
    applied on top, as on a command line."""
    path = Path(path)
    raw = _read_yaml(path)
    if overrides:
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(raw),
                                                     OmegaConf.from_dotlist(overrides)))
    return build_spec(raw, str(path))


__all__ = ["ModelSpec", "Problem", "SlurmSpec", "Spec", "SpecError", "build_spec", "load_spec",
           "validate"]
