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
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .config import (
    MAX_PARAMS,
    ModelConfig,
    ModelSpec,
    ParamConfig,
    RunConfig,
    RunSettings,
    count_params,
    device_kind,
)
from .data import BUNDLED, split_sizes
from .memory import check_memory
from .resources import LauncherSpec, SlurmSpec
from .scaling import TABLES
from .schema import Problem, Problems, SpecError, coerce, deprecated, is_number, suggest
from .stages import STAGES, TRAINING
from .stages.check import CheckSpec
from .stages.search import SearchSpec
from .stages.select import SelectSpec
from .stages.sweep import SweepBlock, SweepSpec
from .stages.transfer import ArmSpec, TargetsSpec, check_arms, default_arms
from .study import Study, plain_name_problem, write_text
from .yamlsafe import load_yaml

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
        name_problem = plain_name_problem(self.name)
        if name_problem:
            problems("name", name_problem, "a plain name; the study's folder is "
                     "<results>/<name>")
        for name, m in self.models.items():
            if plain_name_problem(name):
                problems(f"models.{name}", str(plain_name_problem(name)))
            m.check(f"models.{name}", problems)
            if m.width > 0:
                self.arch.check_width(f"models.{name}.width", m.width, problems)
        self.check_model_sizes(problems)
        self.check_seq_lens(problems)
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

    def model_params(self) -> dict[str, int]:
        """Each model's parameter count (`cp.config.count_params`; the vocabulary of a token
        file counts as 256 unless ``data.vocab_size`` says otherwise)."""
        vocab = self.data.vocab_size or 256
        return {name: count_params(ModelConfig(width=m.width, depth=m.depth, seq_len=m.seq_len,
                                               vocab_size=vocab, arch=self.arch))
                for name, m in self.models.items()
                if is_number(m.width) and is_number(m.depth) and m.width > 0 and m.depth > 0}

    def check_model_sizes(self, problems: Problems) -> None:
        """A model beyond any machine is refused now, with its numbers, not after the
        stages before it trained."""
        for name, n in self.model_params().items():
            m = self.models[name]
            if n > MAX_PARAMS:
                problems(f"models.{name}", f"{n:.3g} parameters (width {m.width}, depth "
                         f"{m.depth}): far beyond what any machine trains",
                         f"at most {MAX_PARAMS:.0e} parameters")

    def check_seq_lens(self, problems: Problems) -> None:
        """Every sequence fits in both splits of the corpus (its size is read from the token
        file, without loading it)."""
        if self.data.corpus not in BUNDLED and not Path(self.data.corpus).expanduser().exists():
            return  # reported by data.corpus's own check
        try:
            train, val = split_sizes(self.data)
        except (OSError, ValueError) as e:
            problems("data.corpus", f"cannot read the corpus {self.data.corpus!r}: {e}")
            return
        longest = min(train, val) - 2  # a window of seq_len + 1 tokens, drawn below the end
        lengths = [(f"models.{n}.seq_len", m.seq_len) for n, m in self.models.items()]
        if self.check.enabled:
            lengths.append(("check.seq_len", self.check.seq_len))
        for key, seq_len in lengths:
            if is_number(seq_len) and seq_len > longest:
                problems(key, f"{seq_len} is longer than the corpus allows: "
                         f"{self.data.corpus!r} has {train:,} training and {val:,} validation "
                         f"split tokens (val_fraction {self.data.val_fraction:g})",
                         f"at most {longest:,}, or a larger corpus")

    def check_models(self, file: Optional[str] = None) -> None:
        """With ``arch.factory``: import it and build every model of the spec on the meta
        device (no memory, no init), matching its parameters to ``arch.roles`` and its width
        and depth to the model's; `SpecError` listing what does not fit. Imports torch and
        runs the user's code, so `load_spec` leaves it to ``cpt spec check`` and to the
        stages that build models."""
        if self.arch.factory is None:
            return
        from .data import vocab_size
        from .runmodel import check_factory

        problems = Problems()
        vocab = vocab_size(self.data)
        seen: set[tuple[int, int, int]] = set()
        for name, m in self.models.items():
            if (m.width, m.depth, m.seq_len) in seen:
                continue
            seen.add((m.width, m.depth, m.seq_len))
            found = check_factory(self.run_config(name), vocab)
            if found:
                key, message = found
                problems(key, f"model {name} (width {m.width}, depth {m.depth}): {message}",
                         "a factory whose model's parameters each match one role, at every "
                         "model's width and depth")
        if problems:
            raise SpecError(file or f"the spec of study {self.name!r}", problems.items)

    def save(self, study: Study) -> None:
        """Keep the resolved spec (defaults filled in) in the study folder; values written
        as interpolations (``${oc.env:X}``, ``${hps.lr}``) are kept as written, so nothing
        read from the environment is stored (or uploaded with the spec)."""
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.structured(self))
        data = yaml.safe_load(text)
        for path, written in written_values(self).items():
            _put(data, path, written)
        first = ("name", "description", "models", "base")  # the study's headline first
        ordered = {**{k: data[k] for k in first}, **{k: v for k, v in data.items()
                                                     if k not in first}}
        write_text(study.spec_file, yaml.safe_dump(ordered, sort_keys=False))


def size_warnings(spec: Spec) -> list[str]:
    """``models.<name>: ...`` for each model larger than its device trains comfortably
    (``runtime.warn_params``)."""
    limit = spec.runtime.params_warning_at()
    where = device_kind(spec.runtime.device)
    return [f"models.{name}: {n / 1e6:,.1f}M parameters, above {limit / 1e6:,.1f}M for a "
            f"{where} run (runtime.device: {spec.runtime.device}); expect a long or "
            "out-of-memory run, or raise runtime.warn_params"
            for name, n in spec.model_params().items() if n > limit]


# ---------------------------------------------------------------------------------------------
# Values written as interpolations: kept as written in the saved spec.

KeyPath = tuple[Any, ...]  # mapping keys and list indices


def _interpolation_leaves(node: Any, at: KeyPath = ()) -> dict[KeyPath, str]:
    """Key paths of the string leaves that hold an interpolation (``${...}``)."""
    out: dict[KeyPath, str] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_interpolation_leaves(v, (*at, k)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.update(_interpolation_leaves(v, (*at, i)))
    elif isinstance(node, str) and "${" in node:
        out[at] = node
    return out


def _put(data: Any, path: KeyPath, value: Any) -> None:
    try:
        for k in path[:-1]:
            data = data[k]
        data[path[-1]] = value
    except (KeyError, IndexError, TypeError):
        pass  # a key the schema does not keep


def _normalised_leaves(raw: dict) -> dict[KeyPath, str]:
    """The interpolation leaves of a raw (unresolved) spec, at their keys' current names."""
    normalised = coerce(_upgrade_rules(raw), Spec, "", Problems())  # type problems: not ours
    return _interpolation_leaves(normalised)


def written_values(spec: Spec) -> dict[KeyPath, str]:
    """Values of ``spec`` that were written as interpolations, as written, by key path (empty
    for a spec built from a plain mapping)."""
    return dict(spec.__dict__.get("_written", {}))


def env_paths(spec: Spec) -> dict[str, str]:
    """Dotted key paths (``data.corpus``) of the values read from the environment
    (``${oc.env:...}``), with the text they were written as: what tracking must not upload."""
    return {".".join(map(str, p)): w for p, w in written_values(spec).items()
            if "oc.env" in w or "env:" in w}


# ---------------------------------------------------------------------------------------------
# Loading.


def _read_yaml(path: Path) -> dict:
    """The raw mapping of a spec file (interpolations not yet resolved), bounded
    (`cp.yamlsafe`)."""
    raw = load_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(str(path), [Problem("", "the spec must be a mapping of keys to values")])
    return raw


def _resolve(raw: dict, file: str) -> dict:
    """``raw`` with its ``${...}`` interpolations resolved (OmegaConf: between keys, and
    ``oc.env`` from the environment)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        # OmegaConf types to_container as any container; a DictConfig's is a dict.
        return OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or ""
        raise SpecError(file, [Problem(str(key), f"cannot resolve: {e.msg}")]) from None


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
    applied on top, as on a command line. Values written as interpolations are remembered as
    written (`written_values`): `Spec.save` keeps them so."""
    path = Path(path)
    raw = _read_yaml(path)
    if overrides:
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            merged = OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as e:
            raise SpecError(str(path), [Problem(str(getattr(e, "full_key", "") or ""),
                                                f"cannot apply --set: {e.msg}")]) from None
        # OmegaConf types to_container as any container; a DictConfig's is a dict.
        raw = OmegaConf.to_container(merged)  # type: ignore[assignment]
    spec = build_spec(_resolve(raw, str(path)), str(path))
    spec.__dict__["_written"] = _normalised_leaves(raw)
    return spec


def _unresolvable_dropped(raw: dict, written: dict[KeyPath, str], file: str) -> dict:
    """``raw`` without the interpolations that cannot be resolved here (``${oc.env:X}`` with X
    unset where a saved study is read): those keys take their defaults, with a note."""
    import copy

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    out = copy.deepcopy(raw)
    for path, text in written.items():
        cfg: Any = OmegaConf.create(out)
        try:
            for k in path:
                cfg = cfg[k]
        except (OmegaConfBaseException, KeyError, IndexError):
            node: Any = out
            for k in path[:-1]:
                node = node[k]
            if isinstance(node, dict):
                del node[path[-1]]
                print(f"cpt: note: {file}: {'.'.join(map(str, path))} is {text}, which cannot "
                      "be resolved here; read as its default", file=sys.stderr)
    return out


def read_study_spec(study: Study) -> Spec:
    """The study's resolved spec (``spec.yaml``, written by every stage), without the checks
    that need the original machine (the corpus file may not exist where the folder is read).
    Keys renamed since the study ran are read under their new names."""
    if not study.spec_file.exists():
        raise FileNotFoundError(f"{study.spec_file} not found: is {study.root} a study folder "
                                "(results/<study>)?")
    file = str(study.spec_file)
    raw = _read_yaml(study.spec_file)
    written = _normalised_leaves(raw)
    problems = Problems()
    normalised = coerce(_upgrade_rules(_resolve(_unresolvable_dropped(raw, written, file),
                                                file)), Spec, "", problems)
    if problems:
        raise SpecError(file, problems.items)
    spec = _typed(normalised)
    spec.__dict__["_written"] = written
    return spec


__all__ = ["ArmSpec", "CheckSpec", "LauncherSpec", "Problem", "SearchSpec", "SelectSpec",
           "SlurmSpec", "Spec", "SpecError", "SweepBlock", "SweepSpec", "TargetsSpec",
           "TrackingSpec", "build_spec", "env_paths", "load_spec", "read_study_spec",
           "size_warnings", "validate", "written_values"]
