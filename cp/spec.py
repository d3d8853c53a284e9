"""Study specs: the YAML schema (typed OmegaConf structured configs) and its loading.

The schema is composed here from sections that live with the code they configure: the run
settings (`cp.config.RunSettings`: data, arch, parameterisation, hps, factors, schedule, train,
runtime, seed), the models (`cp.config.ModelSpec`: a `cp.scaling.Scale` and its ``parallel``),
each stage's section (in its module under `cp.stages`), the launcher (`cp.resources`) and
tracking. Each section's fields carry their docs and defaults, and its ``check`` method its
allowed values.

A spec is checked completely before any work: a structural pass (unknown keys with a
did-you-mean, types, required keys, renamed keys) on the raw YAML, then each section's checks
on the typed spec. `load_spec` raises `SpecError` carrying every problem, each with the file,
the key path, the bad value and what is allowed; the CLI prints them without a traceback.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import ModelSpec, ParamConfig, RunConfig, RunSettings
from .memory import check_memory
from .resources import LauncherSpec, SlurmSpec
from .scaling import TABLES
from .schema import Problem, Problems, SpecError, coerce, deprecated, suggest
from .stages import STAGES, TRAINING
from .stages.check import CheckSpec
from .stages.search import SearchSpec
from .stages.select import SelectSpec
from .stages.sweep import SweepBlock, SweepSpec
from .stages.transfer import ArmSpec, TargetsSpec, check_arms, default_arms
from .study import Study, write_text

#: The sections the memory plan reads: it is checked once they are sound.
MEMORY_INPUTS = {"data", "arch", "train", "models", "base", "sweeps", "targets", "launcher"}


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

    def check(self, at: str, problems: Problems) -> None:
        """A URI MLflow can open (it is only contacted when a stage runs)."""
        if self.uri is not None and self.uri != "databricks" and not re.match(
                r"^[A-Za-z][A-Za-z0-9+.-]*:", self.uri):
            problems(f"{at}.uri", f"{self.uri!r} is not a tracking URI",
                     "a URI such as http://host:5000 or sqlite:///path/mlflow.db; unset: the "
                     "embedded store in the study folder")
        if self.experiment is not None and not self.experiment.strip():
            problems(f"{at}.experiment", "empty experiment name",
                     "a name, or unset for the study name")


@dataclass(kw_only=True)
class Spec(RunSettings):
    """A scaling study."""

    name: str = ""
    """Study name (default: the spec file's stem); names the results folder."""
    description: str = ""
    """Free text shown in reports."""
    models: dict[str, ModelSpec] = field(default_factory=dict)
    """Named models (at least the base, usually ``proxy`` and ``target``), each a point on
    the transfer axes, with how its runs execute (``parallel``)."""
    base: str = "proxy"
    """The model at whose scale ``hps`` and ``factors`` are given (and tuned)."""
    tables: dict[str, ParamConfig] = field(default_factory=dict)
    """More named tables (for side-by-side sweeps, arms and ablations): name -> {base,
    alpha, rules} (``base`` defaults to completed_p; the key is the table's name). Usable
    wherever a parameterisation name is."""
    check: CheckSpec = field(default_factory=CheckSpec)
    """Stage 1: the coordinate check guard."""
    sweeps: SweepSpec = field(default_factory=SweepSpec)
    """Stage 2: global HP grid at the base model, and transfer sweeps along the axes."""
    select: SelectSpec = field(default_factory=SelectSpec)
    """Stage 3: picking the global optimum."""
    search: SearchSpec = field(default_factory=SearchSpec)
    """Stage 4: per-module search at the base model."""
    targets: TargetsSpec = field(default_factory=TargetsSpec)
    """Stages 5-6: models the HPs are transferred to and trained at."""
    arms: list[ArmSpec] = field(default_factory=default_arms)
    """Stages 5-6: the HP sets compared at each target."""
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    """Where runs execute."""
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    """Where stages and runs are logged (MLflow)."""

    # -- what the stages ask of a spec --------------------------------------------------------
    def target_models(self) -> list[str]:
        return self.targets.models or [m for m in self.models if m != self.base]

    def table_names(self) -> list[str]:
        """Every parameterisation name a spec key may use."""
        return list(dict.fromkeys([*TABLES, *self.tables, self.parameterisation.name]))

    def table_config(self, name: Optional[str]) -> ParamConfig:
        """The study's parameterisation, a table of ``tables``, or a built-in table by name
        (without the study's overrides, which were written for the study's table)."""
        if name is None or name == self.parameterisation.name:
            return self.parameterisation
        if name in self.tables:
            t = self.tables[name]
            return ParamConfig(name=name, alpha=t.alpha, base=t.base or "completed_p",
                               rules={g: {k: dict(a) for k, a in ks.items()}
                                      for g, ks in t.rules.items()})
        return ParamConfig(name=name)

    def run_config(self, model: str, **changes: Any) -> RunConfig:
        """The RunConfig of model ``model`` with this spec's HPs transferred from the base.
        ``changes`` replace RunConfig fields (e.g. ``seed=1``, ``hps=...``)."""
        if model not in self.models:
            raise KeyError(f"no model {model!r} in spec {self.name!r}; models: "
                           f"{', '.join(self.models)}")
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(RunSettings)}
        entry = self.models[model]
        return RunConfig(**{**shared, "scale": entry, "base_scale": self.models[self.base],
                            "parallel": entry.parallel, **changes})

    # -- checks ------------------------------------------------------------------------------
    def check_all(self, problems: Problems) -> None:
        """Every section's checks (the structural pass has run: the types are right)."""
        self.check_settings(problems)
        if not self.models:
            problems("models", "no models defined",
                     "a mapping of names to {width, depth, batch, tokens, seq_len}")
        for name, m in self.models.items():
            m.check(f"models.{name}", problems)
            if m.width > 0:
                self.arch.check_width(f"models.{name}.width", m.width, problems)
        if self.models and self.base not in self.models:
            problems("base", f"{self.base!r} is not a model of this spec" +
                     suggest(self.base, self.models), ", ".join(self.models))
        for name, table in self.tables.items():
            key = f"tables.{name}"
            if name in TABLES:
                problems(key, f"{name!r} is a built-in table; give your table another name")
                continue
            if table.name not in ("completed_p", name):
                problems(f"{key}.name", f"{table.name!r}: a table is named by its key "
                         f"({name!r})", f"leave name out, or {name!r}")
            self.table_config(name).check(key, problems)
        self.check.check("check", problems)
        self.sweeps.check("sweeps", self, problems)
        self.search.check("search", problems)
        if self.base in self.models:
            self.targets.check("targets", self, problems)
        check_arms("arms", self.arms, self, problems)
        self.check_seeds(problems)
        self.launcher.check("launcher", problems, TRAINING)
        self.tracking.check("tracking", problems)
        if not any(p.key.split(".")[0] in MEMORY_INPUTS for p in problems.items):
            check_memory(self, problems)

    def check_seeds(self, problems: Problems) -> None:
        """What selects must not judge: no seed both chooses (sweeps, search trials, the target
        sweep) and judges (re-evaluations, target arms), anywhere in the study."""
        uses: dict[str, dict[int, list[str]]] = {"choose": {}, "judge": {}}
        for stage in STAGES:
            for u in stage.seeds(self) if stage.seeds is not None else []:
                uses[u.stream].setdefault(u.seed, []).append(u.key)
        for seed in sorted(set(uses["choose"]) & set(uses["judge"])):
            judging, choosing = uses["judge"][seed], uses["choose"][seed]
            problems(judging[0], f"seed {seed} judges ({', '.join(judging)}) but also chooses "
                     f"({', '.join(choosing)}): a number measured on it would be in-sample",
                     "judging seeds that no choosing run uses (e.g. targets.seeds: [1, 2] "
                     "with sweeps.seeds: [0])")

    def save(self, study: Study) -> None:
        """Keep the resolved spec (defaults filled in) in the study folder."""
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.structured(self))
        data = yaml.safe_load(text)
        first = ("name", "description", "models", "base")  # the study's headline first
        ordered = {**{k: data[k] for k in first}, **{k: v for k, v in data.items()
                                                     if k not in first}}
        write_text(study.spec_file, yaml.safe_dump(ordered, sort_keys=False))


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
        # OmegaConf types to_container as any container; a DictConfig's is a dict.
        cfg = OmegaConf.create(raw)
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise SpecError(str(path), [Problem(str(key), f"cannot resolve: {e.msg}")]) from None


def _upgrade_rules(raw: dict) -> dict:
    """Rule overrides written with the duration axis's old name (``horizon``) read as
    ``tokens``."""
    def upgrade(at: str, rules: Any) -> Any:
        if not isinstance(rules, dict):
            return rules
        out: dict = {}
        for g, kinds in rules.items():
            if not isinstance(kinds, dict):
                out[g] = kinds
                continue
            out[g] = {}
            for k, axes in kinds.items():
                if isinstance(axes, dict) and "horizon" in axes and "tokens" not in axes:
                    deprecated(f"{at}.{g}.{k}.horizon", f"{at}.{g}.{k}.tokens")
                    axes = {("tokens" if a == "horizon" else a): v for a, v in axes.items()}
                out[g][k] = axes
        return out

    raw = dict(raw)
    if isinstance(raw.get("parameterisation"), dict) and "rules" in raw["parameterisation"]:
        p = dict(raw["parameterisation"])
        p["rules"] = upgrade("parameterisation.rules", p["rules"])
        raw["parameterisation"] = p
    if isinstance(raw.get("tables"), dict):
        raw["tables"] = {name: ({**t, "rules": upgrade(f"tables.{name}.rules", t["rules"])}
                                if isinstance(t, dict) and "rules" in t else t)
                         for name, t in raw["tables"].items()}
    return raw


def _typed(normalised: dict) -> Spec:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Spec), normalised))  # type: ignore[return-value]


def build_spec(raw: dict, file: str = "<spec>") -> Spec:
    """A typed, checked Spec from a raw mapping; SpecError with every problem otherwise."""
    problems = Problems()
    normalised = coerce(_upgrade_rules(raw), Spec, "", problems)
    if problems:
        raise SpecError(file, problems.items)
    spec = _typed(normalised)
    if not spec.name:
        spec.name = Path(file).stem
    spec.check_all(problems)
    if problems:
        raise SpecError(file, problems.items)
    return spec


def validate(raw: dict, file: str = "<spec>") -> Spec:
    """Check a raw spec mapping (`build_spec` under the name that says what it is for)."""
    return build_spec(raw, file)


def load_spec(path: str | Path, overrides: Optional[list[str]] = None) -> Spec:
    """Load and check a spec file. ``overrides`` are dotlist entries (``hps.lr=0.01``)
    applied on top, as on a command line."""
    path = Path(path)
    raw = _read_yaml(path)
    if overrides:
        from omegaconf import OmegaConf

        merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(overrides))
        # OmegaConf types to_container as any container; a DictConfig's is a dict.
        raw = OmegaConf.to_container(merged)  # type: ignore[assignment]
    return build_spec(raw, str(path))


def read_study_spec(study: Study) -> Spec:
    """The study's resolved spec (``spec.yaml``, written by every stage), without the checks
    that need the original machine (the corpus file may not exist where the folder is read).
    Keys renamed since the study ran are read under their new names."""
    if not study.spec_file.exists():
        raise FileNotFoundError(f"{study.spec_file} not found: is {study.root} a study folder "
                                "(results/<study>)?")
    raw = yaml.safe_load(study.spec_file.read_text()) or {}
    problems = Problems()
    normalised = coerce(_upgrade_rules(raw), Spec, "", problems)
    if problems:
        raise SpecError(str(study.spec_file), problems.items)
    return _typed(normalised)


__all__ = ["ArmSpec", "CheckSpec", "LauncherSpec", "Problem", "SearchSpec", "SelectSpec",
           "SlurmSpec", "Spec", "SpecError", "SweepBlock", "SweepSpec", "TargetsSpec",
           "TrackingSpec", "build_spec", "load_spec", "read_study_spec", "validate"]
