"""Study specs: the YAML schema (typed OmegaConf structured configs), its validation, and the
expansion of a spec into concrete runs.

A spec is checked completely before any work: every problem is reported with the file, the key
path, the bad value and what is allowed (unknown keys get a did-you-mean). `load_spec` raises
`SpecError` carrying all of them; the CLI prints them without a traceback.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
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
from .data import BUNDLED, DataConfig
from .scaling import (
    ALPHA_TABLES,
    AXES,
    GROUP_SETS,
    GROUPS,
    HP_KINDS,
    TABLES,
    HPs,
    Multipliers,
    Scale,
    eval_exponent,
)
from .schedule import ScheduleConfig


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
# Errors.


@dataclass
class Problem:
    key: str
    message: str
    allowed: str = ""


class SpecError(Exception):
    """A spec that cannot be run; ``problems`` lists every one found."""

    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__(self.format())

    def format(self) -> str:
        lines = [f"{self.file}: {len(self.problems)} problem(s) in the spec"]
        for p in self.problems:
            lines.append(f"  {p.key or '<top>'}: {p.message}")
            if p.allowed:
                lines.append(f"      allowed: {p.allowed}")
        return "\n".join(lines)


def _suggest(bad: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(bad), allowed, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# ---------------------------------------------------------------------------------------------
# Structural check: unknown keys and types, walking the schema's dataclasses.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    if tp is type(None):
        return "null"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str, problems: list[Problem]) -> Any:
    """``value`` checked against ``tp`` (recursively); returns it normalised (ints written as
    2e6 become ints, numbers written as strings such as "1e-3" become floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            trial: list[Problem] = []
            out = _coerce(value, a, key, trial)
            if not trial:
                return out
        problems.append(Problem(key, f"{value!r} is not a {_type_name(tp)}"))
        return value
    if origin is Literal:
        choices = list(typing.get_args(tp))
        if value not in choices:
            problems.append(Problem(key, f"{value!r} is not allowed" + _suggest(
                value, [str(c) for c in choices]), ", ".join(repr(c) for c in choices)))
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(Problem(key, f"expected a mapping, got {value!r}", _type_name(tp)))
            return value
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        out = {}
        for k, v in value.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in names:
                problems.append(Problem(sub, "unknown key" + _suggest(k, names),
                                        ", ".join(names)))
                continue
            out[k] = _coerce(v, hints[k], sub, problems)
        for f in dataclasses.fields(tp):
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            if required and f.name not in value:
                problems.append(Problem(f"{key}.{f.name}" if key else f.name,
                                        "missing (required)", _type_name(hints[f.name])))
        return out
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(Problem(key, f"expected a mapping, got {value!r}", _type_name(tp)))
            return value
        return {k: _coerce(v, vt, f"{key}.{k}", problems) for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(Problem(key, f"expected a list, got {value!r}", _type_name(tp)))
            return value
        return [_coerce(v, et, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(Problem(key, f"{value!r} is not true/false"))
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value.replace("_", ""))
                if f.is_integer():
                    return int(f)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(key, f"{value!r} is not an integer"))
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(Problem(key, f"{value!r} is not a number"))
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(Problem(key, f"{value!r} is not a string"))
        return value
    return value


# ---------------------------------------------------------------------------------------------
# Semantic checks: values in range, names that exist, models that fit the architecture.


def _check_range(problems: list[Problem], key: str, value: Any, ok: bool, allowed: str) -> None:
    if not ok:
        problems.append(Problem(key, f"{value!r} is out of range", allowed))


def _check_group(problems: list[Problem], key: str, name: str) -> bool:
    known = list(GROUPS) + list(GROUP_SETS)
    if name not in known:
        problems.append(Problem(key, f"unknown group {name!r}" + _suggest(name, known),
                                ", ".join(known)))
        return False
    return True


def _check_kind(problems: list[Problem], key: str, name: str) -> bool:
    if name not in HP_KINDS:
        problems.append(Problem(key, f"unknown HP kind {name!r}" + _suggest(name, HP_KINDS),
                                ", ".join(HP_KINDS)))
        return False
    return True


def check_hp_value(problems: list[Problem], key: str, kind: str, value: float) -> None:
    """The allowed range of each HP kind, in one place."""
    if kind in ("beta1", "beta2"):
        _check_range(problems, key, value, 0 < value < 1, "0 < beta < 1")
    elif kind in ("lr", "eps", "multiplier"):
        _check_range(problems, key, value, value > 0 and math.isfinite(value), "> 0")
    else:  # init_std, weight_decay
        _check_range(problems, key, value, value >= 0 and math.isfinite(value), ">= 0")


def _semantic(spec: dict, problems: list[Problem]) -> None:
    arch = spec.get("arch", {})
    head_dim = arch.get("head_dim", ArchConfig.head_dim)
    _check_range(problems, "arch.head_dim", head_dim,
                 isinstance(head_dim, int) and head_dim > 0 and head_dim % 2 == 0,
                 "a positive even integer (RoPE rotates pairs)")
    _check_range(problems, "arch.mlp_ratio", arch.get("mlp_ratio", 3.0),
                 arch.get("mlp_ratio", 3.0) > 0, "> 0")
    _check_range(problems, "arch.z_loss", arch.get("z_loss", 0.0),
                 arch.get("z_loss", 0.0) >= 0, ">= 0")

    models = spec.get("models", {})
    if not models:
        problems.append(Problem("models", "no models defined",
                                "a mapping of names to {width, depth, batch, tokens, seq_len}"))
    for name, m in models.items():
        if not isinstance(m, dict):
            continue
        for k in ("width", "depth", "batch", "tokens", "seq_len"):
            v = m.get(k)
            if isinstance(v, int):
                _check_range(problems, f"models.{name}.{k}", v, v > 0, "a positive integer")
        w = m.get("width")
        if isinstance(w, int) and isinstance(head_dim, int) and head_dim > 0 and w % head_dim:
            problems.append(Problem(f"models.{name}.width", f"{w} is not a multiple of "
                                    f"arch.head_dim ({head_dim})",
                                    f"a positive multiple of {head_dim}"))
        if all(isinstance(m.get(k), int) and m.get(k) > 0 for k in ("batch", "tokens")):
            seq = m.get("seq_len", 128)
            if isinstance(seq, int) and m["tokens"] < m["batch"] * seq:
                problems.append(Problem(f"models.{name}.tokens", f"{m['tokens']} tokens make no "
                                        f"optimiser step of {m['batch']} x {seq} tokens",
                                        f">= batch * seq_len = {m['batch'] * seq}"))
    base = spec.get("base", "proxy")
    if models and base not in models:
        problems.append(Problem("base", f"{base!r} is not a model of this spec" +
                                _suggest(base, list(models)), ", ".join(models)))

    p = spec.get("parameterisation", {})
    name, start = p.get("name", "completed_p"), p.get("base")
    if start is not None and start not in TABLES:
        problems.append(Problem("parameterisation.base", f"unknown parameterisation {start!r}" +
                                _suggest(start, list(TABLES)), ", ".join(TABLES)))
    if start is None and name not in TABLES:
        problems.append(Problem("parameterisation.name", f"unknown parameterisation {name!r}"
                                + _suggest(name, list(TABLES)) + " (a new table needs "
                                "parameterisation.base)", ", ".join(TABLES)))
    alpha = p.get("alpha")
    if alpha is not None:
        _check_range(problems, "parameterisation.alpha", alpha, 0.5 <= alpha <= 1.0,
                     "0.5 <= alpha <= 1")
        if (start or name) in TABLES and (start or name) not in ALPHA_TABLES:
            problems.append(Problem("parameterisation.alpha", f"table {(start or name)!r} has "
                                    "no residual scaling, so alpha has no effect",
                                    ", ".join(sorted(ALPHA_TABLES))))
    for g, kinds in (p.get("rules") or {}).items():
        if not _check_group(problems, f"parameterisation.rules.{g}", g):
            continue
        for kind, axes in (kinds or {}).items():
            key = f"parameterisation.rules.{g}.{kind}"
            if not _check_kind(problems, key, kind):
                continue
            for axis, expr in (axes or {}).items():
                if axis not in (*AXES, "rho"):
                    problems.append(Problem(f"{key}.{axis}", f"unknown axis {axis!r}" +
                                            _suggest(axis, [*AXES, "rho"]),
                                            ", ".join((*AXES, "rho"))))
                    continue
                try:
                    eval_exponent(expr, 1.0)
                except ValueError as e:
                    problems.append(Problem(f"{key}.{axis}", str(e),
                                            "a number or an expression in alpha"))

    hps = spec.get("hps", {})
    for kind in HP_KINDS:
        if kind in hps and isinstance(hps[kind], (int, float)):
            check_hp_value(problems, f"hps.{kind}", kind, hps[kind])
    for g, kinds in (hps.get("groups") or {}).items():
        if not _check_group(problems, f"hps.groups.{g}", g):
            continue
        for kind, value in (kinds or {}).items():
            if _check_kind(problems, f"hps.groups.{g}.{kind}", kind) and isinstance(
                    value, (int, float)):
                check_hp_value(problems, f"hps.groups.{g}.{kind}", kind, value)

    mults = spec.get("multipliers", {})
    for kind, groups in (mults.get("per_type") or {}).items():
        if not _check_kind(problems, f"multipliers.per_type.{kind}", kind):
            continue
        for g, v in (groups or {}).items():
            key = f"multipliers.per_type.{kind}.{g}"
            if _check_group(problems, key, g) and isinstance(v, (int, float)):
                _check_range(problems, key, v, v > 0, "> 0")
    for kind, factors in (mults.get("per_layer") or {}).items():
        key = f"multipliers.per_layer.{kind}"
        if _check_kind(problems, key, kind) and isinstance(factors, list):
            if not factors:
                problems.append(Problem(key, "empty list", "one or more factors > 0"))
            for i, v in enumerate(factors):
                if isinstance(v, (int, float)):
                    _check_range(problems, f"{key}[{i}]", v, v > 0, "> 0")

    sched = spec.get("schedule", {})
    for k, lo, hi, allowed in (("warmup", 0, 1, "0 <= warmup < 1"),
                               ("decay_fraction", 0, 1, "0 <= decay_fraction <= 1"),
                               ("final_lr", 0, 1, "0 <= final_lr <= 1")):
        v = sched.get(k)
        if isinstance(v, (int, float)):
            ok = lo <= v < hi if k == "warmup" else lo <= v <= hi
            _check_range(problems, f"schedule.{k}", v, ok, allowed)

    train = spec.get("train", {})
    for k in ("evals", "eval_sequences", "log_every"):
        v = train.get(k)
        if isinstance(v, int):
            _check_range(problems, f"train.{k}", v, v >= 1, "an integer >= 1")
    v = train.get("divergence_margin")
    if isinstance(v, (int, float)):
        _check_range(problems, "train.divergence_margin", v, v > 0, "> 0")

    data = spec.get("data", {})
    corpus = data.get("corpus", "shakespeare")
    if isinstance(corpus, str) and corpus not in BUNDLED and not Path(corpus).expanduser(
    ).exists():
        problems.append(Problem("data.corpus", f"{corpus!r} is neither a bundled corpus nor an "
                                "existing file (paths are relative to the working directory)",
                                ", ".join(BUNDLED) + ", or a path to .txt/.bin/.npy"))
    vf = data.get("val_fraction")
    if isinstance(vf, (int, float)):
        _check_range(problems, "data.val_fraction", vf, 0 < vf < 0.5, "0 < val_fraction < 0.5")


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
    normalised = _coerce(raw, schema, "", problems)
    if not problems:
        _semantic(normalised, problems)
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


__all__ = ["ModelSpec", "Problem", "Spec", "SpecError", "build_spec", "load_spec", "validate"]
