"""Stage 3, select: the global optimum per swept parameterisation, from the base-model grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..analysis import select_optimum
from ..doc import fmt
from ..study import Study, read_table, write_json
from .base import (
    Context,
    Outputs,
    ReportContext,
    Stage,
    StageFailed,
    StagePlan,
    base_outputs,
    read_selected,
)
from .sweep import grid_points, sweep_tables

if TYPE_CHECKING:
    from ..spec import Spec


@dataclass
class SelectSpec:
    """How the global optimum is picked from the base-model sweep."""

    method: Literal["argmin", "fit"] = "fit"
    """``argmin`` of the seed-averaged loss, or ``fit``: the argmin, refined for each kind by a
    quadratic fit of loss against log2(value) through the argmin and its grid neighbours."""


def run(ctx: Context) -> dict:
    import polars as pl

    spec, study = ctx.spec, ctx.study
    kinds = list(spec.sweeps.grid)
    selected: dict[str, dict] = {}
    if not kinds:
        selected[spec.parameterisation.name] = {"values": {}, "argmin": {}, "loss": math.nan,
                                                "method": "spec", "fitted": {}}
    else:
        df = read_table(study.sweep_table, ["axis", "parameterisation", "loss", *kinds]
                        ).filter(pl.col("axis") == "base")
        for table in sweep_tables(spec):
            sub = df.filter(pl.col("parameterisation") == table)
            points = []
            for point in grid_points(spec.sweeps.grid):
                rows = sub.filter(pl.all_horizontal(pl.col(k) == v for k, v in point.items()))
                losses = rows["loss"].to_list()
                mean = sum(losses) / len(losses) if losses else math.inf
                points.append({**point, "loss": mean})
            try:
                selected[table] = select_optimum(points, kinds, spec.select.method)
            except ValueError as e:
                raise StageFailed(f"select: {table}: {e}") from None
            vals = ", ".join(f"{k}={v:.4g}" for k, v in selected[table]["values"].items())
            ctx.echo(f"[select] {table}: {vals} (grid best loss "
                     f"{selected[table]['loss']:.4f}, {spec.select.method})")
    write_json(study.select_file, selected)
    return selected


def plan(spec: Spec) -> StagePlan:
    return StagePlan("select", 0, 0, spec.select.method)


def outputs(study: Study) -> Outputs:
    out = base_outputs(study, "select")
    out.add(study.select_file, "select")
    if study.select_file.exists():
        for table, sel in read_selected(study).items():
            for kind, value in sel.get("values", {}).items():
                out.metrics.append((f"{table}.{kind}", float(value), 0))
            if isinstance(sel.get("loss"), float) and math.isfinite(sel["loss"]):
                out.metrics.append((f"{table}.grid_best_loss", float(sel["loss"]), 0))
    return out


def report(rc: ReportContext) -> None:
    if not rc.study.select_file.exists():
        return
    selected = read_selected(rc.study)
    rc.doc.h(1, "Global optimum at the base model")
    rc.doc.table(["parameterisation", "values", "grid best loss", "method"],
                 [[table, ", ".join(f"{k} = {fmt(v)}" for k, v in s["values"].items())
                   or "spec's hps", fmt(s["loss"]), s["method"]]
                  for table, s in selected.items()])


STAGE = Stage(name="select", summary="the global optimum per table (argmin, or a quadratic "
              "fit in log2)", after=("sweep",), run=run, done=lambda study: study.select_file,
              plan=plan, outputs=outputs, report=report)
