"""Stage 3, select: the global optimum per swept parameterisation, from the base-model grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..analysis import select_optimum
from ..doc import fmt, fmt_interval
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
from .sweep import sweep_tables

if TYPE_CHECKING:
    from ..spec import Spec


@dataclass
class SelectSpec:
    """How the global optimum is picked from the base-model sweep."""

    method: Literal["argmin", "fit"] = "fit"
    """``argmin`` of the seed-averaged loss, or ``fit``: for each kind, the optimum of the
    grid line through the argmin by the estimator of `cp.estimate` (a local cubic in log2 of
    the value), with its 95% interval over seeds."""


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
            rows = sub.select([*kinds, "seed", "loss"]).unique([*kinds, "seed"]).to_dicts()
            try:
                selected[table] = select_optimum(rows, kinds, spec.select.method)
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


def _value_text(kind: str, value: float, found: dict) -> str:
    i = found.get("intervals", {}).get(kind)
    if i is None:
        return f"{kind} = {fmt(value)}"
    return f"{kind} = {fmt_interval(value, i['low'], i['high'])}"


def report(rc: ReportContext) -> None:
    if not rc.study.select_file.exists():
        return
    selected = read_selected(rc.study)
    rc.doc.h(1, "Global optimum at the base model")
    rc.doc.p("The base HPs every other stage starts from (these sweep seeds choose; no "
             "judging run uses them). Intervals: 95%, over seeds, as in the transfer sweeps.")
    rc.doc.table(["parameterisation", "values [95% CI]", "grid best loss", "method"],
                 [[table, ", ".join(_value_text(k, v, s) for k, v in s["values"].items())
                   or "spec's hps", fmt(s["loss"]), s["method"]]
                  for table, s in selected.items()])
    for table, s in selected.items():
        for kind, value in s["values"].items():
            i = s.get("intervals", {}).get(kind, {})
            rc.found.metric(f"selected.{table}.{kind}", value, i.get("low"), i.get("high"))


STAGE = Stage(name="select", summary="the global optimum per table (argmin, or a quadratic "
              "fit in log2)", after=("sweep",), run=run, done=lambda study: study.select_file,
              plan=plan, outputs=outputs, report=report)
