"""Expansion of a spec's stages into concrete runs. Pure and torch-free: `cpt plan` and the
stage runners both use it, so what is planned is what runs.

A `PlannedRun` is a RunConfig plus the tags that say why it exists (stage, axis, arm...). Runs
from different stages or tags can resolve to the same run id; they are trained once.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

from .config import ParamConfig, RunConfig
from .scaling import Multipliers
from .spec import ArmSpec, Spec


@dataclass
class PlannedRun:
    config: RunConfig
    tags: dict[str, Any] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.config.run_id()

    @property
    def tokens(self) -> int:
        return self.config.scale.steps * self.config.scale.tokens_per_step


def table_config(spec: Spec, name: Optional[str]) -> ParamConfig:
    """The study's parameterisation, a table of the spec's ``tables``, or a built-in table by
    name (without the study's overrides, which were written for the study's table)."""
    if name is None or name == spec.parameterisation.name:
        return spec.parameterisation
    if name in spec.tables:
        t = spec.tables[name]
        return ParamConfig(name=name, alpha=t.alpha, base=t.base,
                           rules={g: {k: dict(a) for k, a in ks.items()}
                                  for g, ks in t.rules.items()})
    return ParamConfig(name=name)


def grid_points(grid: dict[str, list[float]], kinds: Optional[list[str]] = None) -> list[dict]:
    kinds = [k for k in grid if kinds is None or k in kinds]
    return [dict(zip(kinds, values, strict=True))
            for values in itertools.product(*(grid[k] for k in kinds))]


def sweep_tables(spec: Spec) -> list[str]:
    return list(dict.fromkeys([spec.parameterisation.name, *spec.sweeps.parameterisations]))


def sweep_runs(spec: Spec) -> list[PlannedRun]:
    """The base-model grid for every swept table, the axes grid along each axis, then the
    extra blocks. Tags: block (``main`` or the block's name), axis, axis_value,
    parameterisation, seed and the grid values."""
    runs = _main_sweep(spec)
    base_scale = spec.models[spec.base].scale()
    for block in spec.sweeps.extra:
        for table in block.parameterisations:
            pcfg = table_config(spec, table)
            for axis, values in block.axes.items():
                for value in values:
                    scale = dataclasses.replace(base_scale, **{axis: value})
                    for point in grid_points(block.grid):
                        for seed in block.seeds:
                            cfg = spec.run_config(spec.base, scale=scale,
                                                  parameterisation=pcfg,
                                                  hps=spec.hps.with_values(point), seed=seed)
                            runs.append(PlannedRun(cfg, {
                                "stage": "sweep", "block": block.name, "axis": axis,
                                "axis_value": value, "parameterisation": table, "seed": seed,
                                **point}))
    return runs


def _main_sweep(spec: Spec) -> list[PlannedRun]:
    sw = spec.sweeps
    if not sw.grid:
        return []
    runs = []
    base_scale = spec.models[spec.base].scale()
    for table in sweep_tables(spec):
        pcfg = table_config(spec, table)
        for point in grid_points(sw.grid):
            for seed in sw.seeds:
                cfg = spec.run_config(spec.base, parameterisation=pcfg,
                                      hps=spec.hps.with_values(point), seed=seed)
                runs.append(PlannedRun(cfg, {"stage": "sweep", "block": "main", "axis": "base",
                                             "axis_value": None, "parameterisation": table,
                                             "seed": seed, **point}))
        for axis, values in sw.axes.items():
            for value in values:
                scale = dataclasses.replace(base_scale, **{axis: value})
                for point in grid_points(sw.grid, sw.axes_kinds):
                    for seed in sw.seeds:
                        cfg = spec.run_config(spec.base, scale=scale, parameterisation=pcfg,
                                              hps=spec.hps.with_values(point), seed=seed)
                        runs.append(PlannedRun(cfg, {"stage": "sweep", "block": "main",
                                                     "axis": axis,
                                                     "axis_value": value,
                                                     "parameterisation": table, "seed": seed,
                                                     **point}))
    return runs


def search_run(spec: Spec, global_values: dict[str, float], multipliers: Multipliers,
               seed: int, tags: dict[str, Any]) -> PlannedRun:
    """One per-module search trial: the base model at the global optimum times multipliers."""
    cfg = spec.run_config(spec.base, hps=spec.hps.with_values(global_values),
                          multipliers=multipliers, seed=seed)
    return PlannedRun(cfg, {"stage": "search", "seed": seed, **tags})


def arm_run(spec: Spec, arm: ArmSpec, model: str, seed: int,
            selected: dict[str, dict], search_multipliers: Optional[Multipliers]) -> PlannedRun:
    """The run of ``arm`` at target ``model``: its HPs transferred from the base."""
    table = arm.parameterisation or spec.parameterisation.name
    hps = spec.hps
    if arm.hps == "global" and table in selected:
        hps = spec.hps.with_values(selected[table]["values"])
    multipliers = Multipliers()
    if arm.multipliers == "search":
        if search_multipliers is None:
            raise ValueError(f"arm {arm.name!r} needs the search's best multipliers, which "
                             "are not available (run the search stage first)")
        multipliers = search_multipliers
    cfg = spec.run_config(model, parameterisation=table_config(spec, table), hps=hps,
                          multipliers=multipliers, seed=seed)
    return PlannedRun(cfg, {"stage": "target", "model": model, "arm": arm.name,
                            "parameterisation": table, "seed": seed})


@dataclass
class StagePlan:
    stage: str
    runs: int
    tokens: int
    note: str = ""


def plan(spec: Spec) -> list[StagePlan]:
    """Run count and training tokens per stage (the search counts its budget)."""
    out = []
    chk = spec.check
    if chk.enabled:
        n = (len(chk.width_mults) + len(chk.depth_mults)) * chk.seeds
        out.append(StagePlan("check", n, n * chk.steps * chk.batch * chk.seq_len,
                             f"{chk.steps} steps per model"))
    sweeps = sweep_runs(spec)
    unique = {r.run_id: r for r in sweeps}
    out.append(StagePlan("sweep", len(unique), sum(r.tokens for r in unique.values()),
                         f"{len(sweeps) - len(unique)} shared points" if len(sweeps) >
                         len(unique) else ""))
    out.append(StagePlan("select", 0, 0, spec.select.method))
    if spec.search.enabled:
        proxy = spec.run_config(spec.base).scale
        n = spec.search.trials + 2 * len(spec.search.reeval_seeds)
        out.append(StagePlan("search", n, n * proxy.steps * proxy.tokens_per_step,
                             f"{spec.search.algorithm}, {spec.search.trials} trials + "
                             f"re-evaluation of the best and the global optimum"))
    n_runs = tokens = 0
    for model in spec.target_models():
        scale = spec.run_config(model).scale
        k = len(spec.arms) * len(spec.targets.seeds)
        n_runs += k
        tokens += k * scale.steps * scale.tokens_per_step
    out.append(StagePlan("transfer", 0, 0, f"{len(spec.target_models())} target(s) x "
                         f"{len(spec.arms)} arm(s)"))
    out.append(StagePlan("target", n_runs, tokens, ", ".join(a.name for a in spec.arms)))
    out.append(StagePlan("report", 0, 0))
    return out
