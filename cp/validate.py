"""Validation of study specs: every problem found at once, each with its key path, the bad
value and what is allowed (did-you-mean for unknown names). Works on the raw YAML mapping, so it
runs before anything is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from .config import ArchConfig
from .data import BUNDLED
from .resources import SlurmSpec
from .scaling import (
    ALPHA_TABLES,
    AXES,
    GROUP_SETS,
    GROUPS,
    HP_KINDS,
    TABLES,
    eval_exponent,
    split_hp_key,
)

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


def type_name(tp: Any) -> str:
    if tp is Any:
        return "any value"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"mapping of {type_name(k)} to {type_name(v)}"
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping with keys " + ", ".join(f.name for f in dataclasses.fields(tp))
    if tp is type(None):
        return "null"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, key: str, problems: list[Problem]) -> Any:
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
            out = coerce(value, a, key, trial)
            if not trial:
                return out
        problems.append(Problem(key, f"{value!r} is not a {type_name(tp)}"))
        return value
    if origin is Literal:
        choices = list(typing.get_args(tp))
        if value not in choices:
            problems.append(Problem(key, f"{value!r} is not allowed" + _suggest(
                value, [str(c) for c in choices]), ", ".join(repr(c) for c in choices)))
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(Problem(key, f"expected a mapping, got {value!r}", type_name(tp)))
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
            out[k] = coerce(v, hints[k], sub, problems)
        for f in dataclasses.fields(tp):
            required = (f.default is dataclasses.MISSING
                        and f.default_factory is dataclasses.MISSING)
            if required and f.name not in value:
                problems.append(Problem(f"{key}.{f.name}" if key else f.name,
                                        "missing (required)", type_name(hints[f.name])))
        return out
    if origin is dict:
        _, vt = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(Problem(key, f"expected a mapping, got {value!r}", type_name(tp)))
            return value
        return {k: coerce(v, vt, f"{key}.{k}", problems) for k, v in value.items()}
    if origin is list:
        (et,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(Problem(key, f"expected a list, got {value!r}", type_name(tp)))
            return value
        return [coerce(v, et, f"{key}[{i}]", problems) for i, v in enumerate(value)]
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


def semantic_checks(spec: dict, problems: list[Problem]) -> None:
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

    check_param_config(problems, "parameterisation", spec.get("parameterisation", {}))
    for name, table in (spec.get("tables") or {}).items():
        if name in TABLES:
            problems.append(Problem(f"tables.{name}", f"{name!r} is a built-in table; give "
                                    "your table another name"))
        elif isinstance(table, dict):
            check_param_config(problems, f"tables.{name}",
                               {"base": "completed_p", **table, "name": name})

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

    stage_checks(spec, problems)
    tracking_checks(spec, problems)
    launcher_checks(spec.get("launcher") or {}, problems)




def check_param_config(problems: list[Problem], key: str, p: dict) -> None:
    """A parameterisation section: table names, alpha and exponent overrides."""
    name, start = p.get("name", "completed_p"), p.get("base")
    if start is not None and start not in TABLES:
        problems.append(Problem(f"{key}.base", f"unknown parameterisation {start!r}" +
                                _suggest(start, list(TABLES)), ", ".join(TABLES)))
    if start is None and name not in TABLES:
        problems.append(Problem(f"{key}.name", f"unknown parameterisation {name!r}"
                                + _suggest(name, list(TABLES)) + " (a new table needs "
                                "a base)", ", ".join(TABLES)))
    alpha = p.get("alpha")
    if alpha is not None:
        _check_range(problems, f"{key}.alpha", alpha, 0.5 <= alpha <= 1.0,
                     "0.5 <= alpha <= 1")
        if (start or name) in TABLES and (start or name) not in ALPHA_TABLES:
            problems.append(Problem(f"{key}.alpha", f"table {(start or name)!r} has "
                                    "no residual scaling, so alpha has no effect",
                                    ", ".join(sorted(ALPHA_TABLES))))
    for g, kinds in (p.get("rules") or {}).items():
        if not _check_group(problems, f"{key}.rules.{g}", g):
            continue
        for kind, axes in (kinds or {}).items():
            rkey = f"{key}.rules.{g}.{kind}"
            if not _check_kind(problems, rkey, kind):
                continue
            for axis, expr in (axes or {}).items():
                if axis not in (*AXES, "rho"):
                    problems.append(Problem(f"{rkey}.{axis}", f"unknown axis {axis!r}" +
                                            _suggest(axis, [*AXES, "rho"]),
                                            ", ".join((*AXES, "rho"))))
                    continue
                try:
                    eval_exponent(expr, 1.0)
                except ValueError as e:
                    problems.append(Problem(f"{rkey}.{axis}", str(e),
                                            "a number or an expression in alpha"))


AXIS_FIELDS = ("width", "depth", "batch", "tokens")
GROW_AXES = ("width", "depth", "tokens")  # a target is at least the base on these


def _check_table_name(problems: list[Problem], key: str, name: str, spec: dict) -> None:
    known = [*TABLES, *(spec.get("tables") or {}),
             spec.get("parameterisation", {}).get("name", "completed_p")]
    if name not in known:
        problems.append(Problem(key, f"unknown parameterisation {name!r}" +
                                _suggest(name, known), ", ".join(dict.fromkeys(known))))


def _check_grid(problems: list[Problem], key: str, grid: dict) -> None:
    """Grid keys: an HP kind (``lr``), or ``group.kind`` (``qk_norms.eps``) for one group's or
    group set's own base value."""
    groups = [*GROUPS, *GROUP_SETS]
    for name, values in grid.items():
        group, kind = split_hp_key(name)
        if group is not None and group not in groups:
            problems.append(Problem(f"{key}.{name}", f"unknown group {group!r}" +
                                    _suggest(group, groups), "a kind (lr, eps...), or "
                                    f"group.kind with group one of {', '.join(groups)}"))
            continue
        if not _check_kind(problems, f"{key}.{name}", kind) or not isinstance(values, list):
            continue
        if not values:
            problems.append(Problem(f"{key}.{name}", "empty grid",
                                    "a list of one or more values"))
        for i, v in enumerate(values):
            if isinstance(v, (int, float)):
                check_hp_value(problems, f"{key}.{name}[{i}]", kind, v)


def _check_axes(problems: list[Problem], key: str, axes: dict, head_dim: Any) -> None:
    for axis, values in axes.items():
        akey = f"{key}.{axis}"
        if axis not in AXIS_FIELDS:
            problems.append(Problem(akey, f"unknown axis {axis!r}" +
                                    _suggest(axis, list(AXIS_FIELDS)), ", ".join(AXIS_FIELDS)))
            continue
        if not values:
            problems.append(Problem(akey, "empty list", "one or more values"))
        for i, v in enumerate(values or []):
            if not isinstance(v, int):
                continue
            _check_range(problems, f"{akey}[{i}]", v, v > 0, "a positive integer")
            if axis == "width" and isinstance(head_dim, int) and head_dim > 0 and v % head_dim:
                problems.append(Problem(f"{akey}[{i}]", f"{v} is not a multiple of "
                                        f"arch.head_dim ({head_dim})"))


def stage_checks(spec: dict, problems: list[Problem]) -> None:
    """The stage sections: grids, axes, search budget, targets and arms."""
    models = spec.get("models", {})
    base = models.get(spec.get("base", "proxy"), {})
    head_dim = spec.get("arch", {}).get("head_dim", ArchConfig.head_dim)

    check = spec.get("check", {})
    for k in ("width_mults", "depth_mults"):
        mults = check.get(k)
        if isinstance(mults, list) and mults and all(isinstance(m, (int, float)) for m in mults):
            ok = len(set(mults)) >= 3 and min(mults) > 0 and max(mults) / min(mults) >= 2
            _check_range(problems, f"check.{k}", mults, ok,
                         "at least 3 distinct positive multipliers spanning at least 2x "
                         "(the issue asks for 4 spanning 8x)")
    for k in ("steps", "batch", "seq_len", "seeds"):
        v = check.get(k)
        if isinstance(v, int):
            _check_range(problems, f"check.{k}", v, v >= 1, "an integer >= 1")

    sweeps = spec.get("sweeps", {})
    grid = sweeps.get("grid") or {}
    _check_grid(problems, "sweeps.grid", grid)
    if isinstance(sweeps.get("seeds"), list) and not sweeps["seeds"]:
        problems.append(Problem("sweeps.seeds", "empty list", "one or more seeds"))
    for i, name in enumerate(sweeps.get("parameterisations") or []):
        _check_table_name(problems, f"sweeps.parameterisations[{i}]", name, spec)
    _check_axes(problems, "sweeps.axes", sweeps.get("axes") or {}, head_dim)
    for i, kind in enumerate(sweeps.get("axes_kinds") or []):
        if (sweeps.get("axes") or {}) and kind not in grid:
            problems.append(Problem(f"sweeps.axes_kinds[{i}]", f"{kind!r} is not in "
                                    "sweeps.grid", ", ".join(grid) or "(the grid is empty)"))

    names = [b.get("name") for b in sweeps.get("extra") or [] if isinstance(b, dict)]
    for i, block in enumerate(sweeps.get("extra") or []):
        key = f"sweeps.extra[{i}]"
        if names.count(block.get("name")) > 1 or block.get("name") == "main":
            problems.append(Problem(f"{key}.name", f"block name {block.get('name')!r} is "
                                    "taken", "unique names other than 'main'"))
        for j, name in enumerate(block.get("parameterisations") or []):
            _check_table_name(problems, f"{key}.parameterisations[{j}]", name, spec)
        if not block.get("parameterisations"):
            problems.append(Problem(f"{key}.parameterisations", "empty list",
                                    "one or more table names"))
        _check_axes(problems, f"{key}.axes", block.get("axes") or {}, head_dim)
        if not block.get("axes"):
            problems.append(Problem(f"{key}.axes", "no axis", ", ".join(AXIS_FIELDS)))
        _check_grid(problems, f"{key}.grid", block.get("grid") or {})
        if not block.get("grid"):
            problems.append(Problem(f"{key}.grid", "empty grid", "HP kind -> values"))

    search = spec.get("search", {})
    for k in ("trials", "batch"):
        v = search.get(k)
        if isinstance(v, int):
            _check_range(problems, f"search.{k}", v, v >= 1, "an integer >= 1")
    r = search.get("log2_radius")
    if isinstance(r, (int, float)):
        _check_range(problems, "search.log2_radius", r, 0 < r <= 10, "0 < log2_radius <= 10")
    for i, kind in enumerate(search.get("kinds") or []):
        _check_kind(problems, f"search.kinds[{i}]", kind)
    if isinstance(search.get("kinds"), list) and not search["kinds"]:
        problems.append(Problem("search.kinds", "empty list", ", ".join(HP_KINDS)))
    for i, g in enumerate(search.get("groups") or []):
        _check_group(problems, f"search.groups[{i}]", g)
    for kind, groups in (search.get("groups_per_kind") or {}).items():
        if _check_kind(problems, f"search.groups_per_kind.{kind}", kind):
            for i, g in enumerate(groups or []):
                _check_group(problems, f"search.groups_per_kind.{kind}[{i}]", g)
    trrs = search.get("trrs") or {}
    for k in ("init_radius", "min_radius", "grow"):
        v = trrs.get(k)
        if isinstance(v, (int, float)):
            _check_range(problems, f"search.trrs.{k}", v, v > 0, "> 0")
    v = trrs.get("shrink")
    if isinstance(v, (int, float)):
        _check_range(problems, "search.trrs.shrink", v, 0 < v < 1, "0 < shrink < 1")
    v = trrs.get("perturb_prob")
    if isinstance(v, (int, float)):
        _check_range(problems, "search.trrs.perturb_prob", v, 0 <= v <= 1,
                     "0 <= perturb_prob <= 1 (0: automatic)")
    for k in ("round_size", "reeval_top", "reeval_seeds"):
        v = trrs.get(k)
        if isinstance(v, int):
            _check_range(problems, f"search.trrs.{k}", v, v >= (0 if k == "round_size" else 1),
                         "an integer >= 1" if k != "round_size" else ">= 0 (0: the batch)")

    targets = spec.get("targets", {})
    listed = targets.get("models") or []
    for i, name in enumerate(listed):
        if name not in models:
            problems.append(Problem(f"targets.models[{i}]", f"{name!r} is not a model of this "
                                    "spec" + _suggest(name, list(models)), ", ".join(models)))
    base_name = spec.get("base", "proxy")
    for name in listed or [m for m in models if m != base_name]:
        m = models.get(name)
        if not isinstance(m, dict) or name == base_name:
            continue
        for axis in GROW_AXES:
            if isinstance(m.get(axis), int) and isinstance(base.get(axis), int) and \
                    m[axis] < base[axis]:
                problems.append(Problem(f"models.{name}.{axis}", f"target {name!r} has "
                                        f"{axis} {m[axis]}, smaller than the base's "
                                        f"{base[axis]}; a target must not shrink on "
                                        f"{', '.join(GROW_AXES)}",
                                        f">= {base[axis]}"))
    if isinstance(targets.get("seeds"), list) and not targets["seeds"]:
        problems.append(Problem("targets.seeds", "empty list", "one or more seeds"))

    study_table = spec.get("parameterisation", {}).get("name", "completed_p")
    swept = {study_table, *(sweeps.get("parameterisations") or [])}
    names = [a.get("name") for a in spec.get("arms") or [] if isinstance(a, dict)]
    for i, arm in enumerate(spec.get("arms") or []):
        key = f"arms[{i}]"
        if names.count(arm.get("name")) > 1:
            problems.append(Problem(f"{key}.name", f"arm name {arm.get('name')!r} is used "
                                    "twice", "unique names"))
        table = arm.get("parameterisation")
        if table is not None:
            _check_table_name(problems, f"{key}.parameterisation", table, spec)
        if (arm.get("hps", "global") == "global" and grid and table is not None
                and table not in swept):
            problems.append(Problem(f"{key}.parameterisation", f"arm {arm.get('name')!r} "
                                    f"takes the global optimum of {table!r}, which is not "
                                    "swept", "add it to sweeps.parameterisations, or set "
                                    "the arm's hps: spec"))
        if arm.get("multipliers") == "search" and not search.get("enabled", True):
            problems.append(Problem(f"{key}.multipliers", "'search' needs the search stage, "
                                    "which is disabled", "none, or search.enabled: true"))


def tracking_checks(spec: dict, problems: list[Problem]) -> None:
    """The tracking section: a URI MLflow can open (it is only contacted when a stage runs)."""
    import re

    t = spec.get("tracking", {})
    uri = t.get("uri")
    if isinstance(uri, str) and uri != "databricks" and not re.match(
            r"^[A-Za-z][A-Za-z0-9+.-]*:", uri):
        problems.append(Problem("tracking.uri", f"{uri!r} is not a tracking URI",
                                "a URI such as http://host:5000 or sqlite:///path/mlflow.db; "
                                "unset: the embedded store in the study folder"))
    exp = t.get("experiment")
    if isinstance(exp, str) and not exp.strip():
        problems.append(Problem("tracking.experiment", "empty experiment name",
                                "a name, or unset for the study name"))


# Stages whose runs go through the launcher (per-stage SLURM resources apply to these).
LAUNCHED_STAGES = ("sweep", "search", "target")
# Allowed range of each numeric SLURM key: (lowest value, what the message says).
SLURM_RANGES = {"gpus_per_node": (0, "an integer >= 0"), "nodes": (1, "an integer >= 1"),
                "tasks_per_node": (0, "an integer >= 0 (0: one per GPU)"),
                "cpus_per_task": (1, "an integer >= 1"), "time_min": (1, "minutes >= 1"),
                "signal_delay_s": (0, "seconds >= 0"), "max_timeouts": (0, "an integer >= 0"),
                "array_parallelism": (1, "an integer >= 1")}


def _check_slurm(problems: list[Problem], key: str, slurm: dict, base: dict) -> None:
    """The keys set in ``slurm``; ``base`` holds the values they are merged over."""
    for k, (lo, allowed) in SLURM_RANGES.items():
        v = slurm.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _check_range(problems, f"{key}.{k}", v, v >= lo, allowed)
    for k in ("mem_gb", "poll_s"):
        v = slurm.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _check_range(problems, f"{key}.{k}", v, v > 0 and math.isfinite(v), "> 0")
    if "signal_delay_s" in slurm or "time_min" in slurm:
        merged = {**base, **slurm}
        delay, limit = merged["signal_delay_s"], merged["time_min"]
        if isinstance(delay, int) and isinstance(limit, int) and limit >= 1 and \
                delay >= limit * 60:
            problems.append(Problem(f"{key}.signal_delay_s", f"{delay} s is not within the "
                                    f"time limit of {limit} min (time_min): a job would be "
                                    "told to checkpoint as soon as it starts",
                                    f"signal_delay_s < {limit * 60}"))


def launcher_checks(launcher: dict, problems: list[Problem]) -> None:
    """The launcher section: worker counts, SLURM resources and their per-stage overrides."""
    for k in ("workers", "threads_per_run"):
        v = launcher.get(k)
        if isinstance(v, int):
            _check_range(problems, f"launcher.{k}", v, v >= 0, "an integer >= 0 (0: automatic)")
    defaults = dataclasses.asdict(SlurmSpec())
    slurm = launcher.get("slurm") or {}
    if not isinstance(slurm, dict):
        slurm = {}
    _check_slurm(problems, "launcher.slurm", slurm, defaults)
    hints = typing.get_type_hints(SlurmSpec)
    for stage, keys in (launcher.get("stages") or {}).items():
        key = f"launcher.stages.{stage}"
        if stage not in LAUNCHED_STAGES:
            problems.append(Problem(key, f"{stage!r} is not a stage that trains runs" +
                                    _suggest(stage, list(LAUNCHED_STAGES)),
                                    ", ".join(LAUNCHED_STAGES)))
            continue
        if not isinstance(keys, dict):
            problems.append(Problem(key, f"expected a mapping of launcher.slurm keys, got "
                                    f"{keys!r}", ", ".join(hints)))
            continue
        checked = {}
        for k, v in keys.items():
            if k not in hints:
                problems.append(Problem(f"{key}.{k}", "unknown key" + _suggest(k, list(hints)),
                                        ", ".join(hints)))
                continue
            checked[k] = coerce(v, hints[k], f"{key}.{k}", problems)
        _check_slurm(problems, key, checked, {**defaults, **slurm})
