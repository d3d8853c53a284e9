"""Stage 2, sweep: the global HP grid at the base model, the same grid along each transfer
axis for each swept table, and the extra blocks (ablations). One runs table; the report's
transfer-curve, optimum-shift and ablation sections with their verdicts."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from ..analysis import (
    SHIFT_TOLERANCE,
    block_points,
    main_block,
    optima,
    optimum_shift,
    seed_means,
    sweep_points,
    transfer_suboptimality,
)
from ..config import PlannedRun
from ..doc import fmt
from ..launch import launch
from ..scaling import AXES, GROUP_SETS, GROUPS, HP_KINDS, check_hp_value, split_hp_key
from ..schema import Problems, suggest
from ..study import Study, plain_name_problem
from .base import (
    Context,
    Outputs,
    ReportContext,
    Stage,
    StagePlan,
    read_runs_table,
    read_selected,
    result_row,
    table_outputs,
    write_runs_table,
)

if TYPE_CHECKING:
    from ..spec import Spec


def check_grid(problems: Problems, at: str, grid: dict[str, list[float]]) -> None:
    """Grid keys: an HP kind (``lr``), or ``group.kind`` (``qk_norms.eps``) for one group's or
    group set's own base value; values in the kind's range."""
    groups = [*GROUPS, *GROUP_SETS]
    for name, values in grid.items():
        group, kind = split_hp_key(name)
        key = f"{at}.{name}"
        if group is not None and group not in groups:
            problems(key, f"unknown group {group!r}" + suggest(group, groups), "a kind (lr, "
                     f"eps...), or group.kind with group one of {', '.join(groups)}")
            continue
        if not problems.choice(key, kind, HP_KINDS, "HP kind"):
            continue
        if not values:
            problems(key, "empty grid", "a list of one or more values")
        problems.unique(key, values, "value")
        for i, v in enumerate(values):
            check_hp_value(problems, f"{key}[{i}]", kind, v)


def check_axes(problems: Problems, at: str, axes: dict[str, list[int]], spec: Spec) -> None:
    for axis, values in axes.items():
        key = f"{at}.{axis}"
        if not problems.choice(key, axis, AXES, "axis"):
            continue
        if not values:
            problems(key, "empty list", "one or more values")
        problems.unique(key, values, "value")
        for i, v in enumerate(values):
            problems.range(f"{key}[{i}]", v, v > 0, "a positive integer")
            if axis == "width" and v > 0:
                spec.arch.check_width(f"{key}[{i}]", v, problems)


def check_tables(problems: Problems, at: str, names: list[str], spec: Spec) -> None:
    for i, name in enumerate(names):
        problems.choice(f"{at}[{i}]", name, spec.table_names(), "parameterisation")


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

    def check(self, at: str, spec: Spec, problems: Problems) -> None:
        check_tables(problems, f"{at}.parameterisations", self.parameterisations, spec)
        problems.nonempty(f"{at}.parameterisations", self.parameterisations,
                          "one or more table names")
        check_axes(problems, f"{at}.axes", self.axes, spec)
        problems.nonempty(f"{at}.axes", self.axes, ", ".join(AXES))
        check_grid(problems, f"{at}.grid", self.grid)
        problems.nonempty(f"{at}.grid", self.grid, "HP kind -> values")
        problems.nonempty(f"{at}.seeds", self.seeds, "one or more seeds")
        problems.unique(f"{at}.seeds", self.seeds, "seed")


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

    def check(self, at: str, spec: Spec, problems: Problems) -> None:
        check_grid(problems, f"{at}.grid", self.grid)
        problems.nonempty(f"{at}.seeds", self.seeds, "one or more seeds")
        problems.unique(f"{at}.seeds", self.seeds, "seed")
        check_tables(problems, f"{at}.parameterisations", self.parameterisations, spec)
        check_axes(problems, f"{at}.axes", self.axes, spec)
        if self.axes and self.grid:  # without a grid there is nothing to sweep along them
            for i, kind in enumerate(self.axes_kinds):
                if kind not in self.grid:
                    problems(f"{at}.axes_kinds[{i}]", f"{kind!r} is not in sweeps.grid",
                             ", ".join(self.grid) or "(the grid is empty)")
        names = [b.name for b in self.extra]
        for i, block in enumerate(self.extra):
            key = f"{at}.extra[{i}]"
            if plain_name_problem(block.name):  # it names the block's report figures
                problems(f"{key}.name", str(plain_name_problem(block.name)))
            elif names.count(block.name) > 1 or block.name == "main":
                problems(f"{key}.name", f"block name {block.name!r} is taken",
                         "unique names other than 'main'")
            block.check(key, spec, problems)


# ---------------------------------------------------------------------------------------------
# Planning.


def grid_points(grid: dict[str, list[float]], kinds: Optional[list[str]] = None) -> list[dict]:
    """Every point of the grid's product (over ``kinds`` only, when given)."""
    kinds = [k for k in grid if kinds is None or k in kinds]
    return [dict(zip(kinds, values, strict=True))
            for values in itertools.product(*(grid[k] for k in kinds))]


def sweep_tables(spec: Spec) -> list[str]:
    """The study's table and the other swept ones, in order."""
    return list(dict.fromkeys([spec.parameterisation.name, *spec.sweeps.parameterisations]))


def sweep_runs(spec: Spec) -> list[PlannedRun]:
    """The base-model grid for every swept table, the axes grid along each axis, then the
    extra blocks. Tags: block (``main`` or the block's name), axis, axis_value,
    parameterisation, seed and the grid values."""
    runs = _main_sweep(spec)
    base_scale = spec.models[spec.base]
    for block in spec.sweeps.extra:
        for table in block.parameterisations:
            pcfg = spec.table_config(table)
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
    base_scale = spec.models[spec.base]
    for table in sweep_tables(spec):
        pcfg = spec.table_config(table)
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
                                                     "axis": axis, "axis_value": value,
                                                     "parameterisation": table, "seed": seed,
                                                     **point}))
    return runs


def plan(spec: Spec) -> StagePlan:
    runs = sweep_runs(spec)
    unique = {r.run_id: r for r in runs}
    shared = len(runs) - len(unique)
    return StagePlan("sweep", len(unique), sum(r.tokens for r in unique.values()),
                     f"{shared} shared points" if shared else "")


def run(ctx: Context) -> list[dict]:
    spec, study = ctx.spec, ctx.study
    runs = sweep_runs(spec)
    if not runs:
        ctx.echo("[sweep] no grid in the spec: nothing to sweep")
    results = launch(runs, study, spec.launcher, "sweep", ctx.on_result, ctx.echo)
    rows = [result_row(pr, results[pr.run_id]) for pr in runs]
    write_runs_table(study, "sweep", rows)
    return rows


def outputs(study: Study) -> Outputs:
    return table_outputs(study, "sweep")


# ---------------------------------------------------------------------------------------------
# Report.


def report(rc: ReportContext) -> None:
    transfer_section(rc)
    ablation_section(rc)


def _transfer_verdict(kind: str, s: dict, sub: Optional[dict]) -> str:
    axis, table, shift = s["axis"], s["parameterisation"], s["shift_per_doubling"]
    span = f"{axis} {s['from_value']} to {s['to_value']}, {s['points']} points"
    cost = ""
    if sub is not None and sub.get("suboptimality") is not None:
        cost = (f" Transferring the base optimum to {axis} {sub['axis_value']} costs "
                f"{sub['suboptimality']:.3f} nats of validation loss against that point's own "
                "optimum.")
    if s["holds"] is None:
        if s["edges"]:
            at = ", ".join(str(v) for v in s["edges"])
            why = (f"the lowest loss at {axis} {at} is at the edge of the {kind} grid, so the "
                   f"optimum may lie beyond it; widen sweeps.grid.{kind}")
        else:
            why = "fewer than two points have an optimum"
        moved = ("" if shift is None else f" As measured, the optimum moves {shift:+.2f} "
                 f"octaves per doubling of {axis} ({span}).")
        return f"**Inconclusive: {kind} across {axis} under {table}**: {why}.{moved}{cost}"
    if s["holds"]:
        return (f"**{kind} transfers across {axis} under {table}**: the fitted optimum moves "
                f"{shift:+.2f} octaves per doubling of {axis} ({fmt(s['opt_from'])} to "
                f"{fmt(s['opt_to'])} over {span}), within the ±{SHIFT_TOLERANCE:g} tolerance."
                + cost)
    return (f"**{kind} does not transfer across {axis} under {table}**: the optimum moves "
            f"{shift:+.2f} octaves per doubling of {axis} ({fmt(s['opt_from'])} to "
            f"{fmt(s['opt_to'])} over {span}), beyond the ±{SHIFT_TOLERANCE:g} tolerance."
            + cost)


def _verdict_word(holds: Optional[bool]) -> str:
    words: dict[Optional[bool], str] = {True: "holds", False: "does not hold"}
    return words.get(holds, "inconclusive")


def transfer_section(rc: ReportContext) -> None:
    """Loss against each swept HP along each axis; optima, their shift, and the loss given up
    by transferring. Leaves the suboptimality rows in ``rc.notes["suboptimality"]`` (a target
    whose scale a sweep covered was tuned directly)."""
    import polars as pl

    from ..plots import plot_optimum_shift, plot_transfer_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not study.sweep_table.exists() or not spec.sweeps.axes:
        return
    sweep = main_block(read_runs_table(study, "sweep"))
    selected = read_selected(study) if study.select_file.exists() else {}
    kinds = [k for k in spec.sweeps.axes_kinds if k in spec.sweeps.grid]
    base_values = {ax: getattr(spec.models[spec.base], ax) for ax in spec.sweeps.axes}
    fixed = {k: spec.hps.get(k) for k in spec.sweeps.grid}
    doc.h(1, "Transfer sweeps")
    doc.p("Final validation loss against the base value of each swept HP at several points of "
          "each axis, the HPs transferred from the base model by each parameterisation. Where "
          "transfer holds, the minima line up. Optima are quadratic fits of the seed-mean loss "
          "in log2(HP) around the grid's argmin; the shift per doubling is the slope of "
          "log2(optimum) against log2(axis value); the suboptimality is the loss at the base "
          "optimum carried to that point, minus the loss at that point's own optimum (the "
          "lowest value of the grid's interpolated loss curve; both read off that curve). At "
          "the base model, where nothing is transferred, it shows how well the grid pins the "
          "optimum down.")
    all_sub: list[dict] = []
    for kind in kinds:
        points = sweep_points(sweep, base_values, kind, fixed)
        if points.is_empty():
            continue
        opt = optima(points, kind)
        shifts = optimum_shift(opt)
        chosen = {t: s["values"][kind] for t, s in selected.items() if kind in s["values"]}
        sub = transfer_suboptimality(points, chosen, kind)
        sub_rows = sub.to_dicts() if not sub.is_empty() else []
        all_sub += [{**r, "kind": kind} for r in sub_rows]
        means = seed_means(points, kind).to_dicts()
        for axis in spec.sweeps.axes:
            rows = [m for m in means if m["axis"] == axis]
            marks = {(r["parameterisation"], r["axis_value"]): r["opt"]
                     for r in opt.filter(pl.col("axis") == axis).to_dicts()}
            fig = study.report_figure(f"transfer_{axis}_{kind}")
            plot_transfer_curves(rows, axis, fig, kind=kind, optima=marks)
            doc.h(2, f"{kind} across {axis}")
            doc.fig(fig, f"final loss against base {kind}, one line per {axis}, one panel per "
                    "parameterisation")
            doc.table(["parameterisation", axis, f"optimal {kind}", "fitted", "grid argmin",
                       "loss at optimum", "loss at transferred", "suboptimality"],
                      [[r["parameterisation"], str(r["axis_value"]), fmt(r["opt"]),
                        "yes" if r["fitted"] else "no (argmin)", fmt(r["argmin"]),
                        fmt(r["opt_loss"]), fmt(r["loss_transferred"]),
                        fmt(r["suboptimality"], 3)]
                       for r in sub_rows if r["axis"] == axis])
        fig = study.report_figure(f"optimum_shift_{kind}")
        plot_optimum_shift(opt.to_dicts(), shifts.to_dicts(), fig, kind)
        doc.h(2, f"Shift of the optimal {kind}")
        doc.fig(fig, f"optimal {kind} against each axis (log-log): flat lines transfer")
        doc.table(["parameterisation", "axis", "octaves per doubling", "points", "verdict"],
                  [[s["parameterisation"], s["axis"], fmt(s["shift_per_doubling"], 3),
                    str(s["points"]), _verdict_word(s["holds"])] for s in shifts.to_dicts()])
        for s in shifts.to_dicts():
            last = [r for r in sub_rows if r["parameterisation"] == s["parameterisation"]
                    and r["axis"] == s["axis"] and r["axis_value"] == s["to_value"]]
            found.claim("transfer", _transfer_verdict(kind, s, last[0] if last else None),
                        kind=kind, axis=s["axis"], parameterisation=s["parameterisation"],
                        shift_per_doubling=s["shift_per_doubling"], holds=s["holds"],
                        suboptimality=last[0]["suboptimality"] if last else None)
            found.metric(f"shift.{kind}.{s['axis']}.{s['parameterisation']}",
                         s["shift_per_doubling"])
            if last:
                found.metric(f"suboptimality.{kind}.{s['axis']}.{s['parameterisation']}",
                             last[0]["suboptimality"])
    rc.notes["suboptimality"] = all_sub


def ablation_section(rc: ReportContext) -> None:
    """Each extra sweep block: the swept HP's optimum along the block's axis under each of its
    tables, and which table keeps it stiller (the smaller shift per doubling)."""
    import polars as pl

    from ..plots import plot_transfer_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not spec.sweeps.extra or not study.sweep_table.exists():
        return
    sweep = read_runs_table(study, "sweep")
    doc.h(1, "Ablations")
    doc.p("Each block sweeps the HP a rule governs along the axis the rule is about, under "
          "tables with and without the rule. A rule that is right keeps the optimum still: "
          "its optimum moves fewer octaves per doubling of the axis.")
    for block in spec.sweeps.extra:
        for kind in block.grid:
            points = block_points(sweep, block.name, kind)
            if points.is_empty():
                continue
            opt = optima(points, kind)
            shifts = optimum_shift(opt).to_dicts()
            means = seed_means(points, kind).to_dicts()
            for axis in block.axes:
                marks = {(r["parameterisation"], r["axis_value"]): r["opt"]
                         for r in opt.filter(pl.col("axis") == axis).to_dicts()}
                fig = study.report_figure(f"ablation_{block.name}_{kind}_{axis}")
                plot_transfer_curves([m for m in means if m["axis"] == axis], axis, fig,
                                     kind=kind, optima=marks)
                doc.h(2, f"{block.name}: {kind} across {axis}")
                doc.fig(fig, f"final loss against base {kind}, one line per {axis}, one panel "
                        "per table")
            doc.table(["table", "axis", "octaves per doubling", "points", "verdict"],
                      [[s["parameterisation"], s["axis"], fmt(s["shift_per_doubling"], 3),
                        str(s["points"]), _verdict_word(s["holds"])] for s in shifts])
            for axis in block.axes:
                mine = [s for s in shifts if s["axis"] == axis]
                found.claim("ablation", _ablation_verdict(block.name, kind, axis, mine),
                            block=block.name, kind=kind, axis=axis,
                            shifts={s["parameterisation"]: s["shift_per_doubling"]
                                    for s in mine})
                for s in mine:
                    found.metric(f"ablation.{block.name}.{s['parameterisation']}",
                                 s["shift_per_doubling"])


def _ablation_verdict(block: str, kind: str, axis: str, shifts: list[dict]) -> str:
    parts = ", ".join(f"{s['parameterisation']} {fmt(s['shift_per_doubling'], 3)}"
                      + (" (inconclusive: optimum at the grid's edge)" if s["inconclusive"]
                         else "") for s in shifts)
    judged = [s for s in shifts if s["shift_per_doubling"] is not None
              and not s["inconclusive"]]
    head = f"**Ablation {block}** ({kind} along {axis}; octaves per doubling): {parts}."
    if len(judged) < 2:
        return head + " Too few conclusive optima to say which table keeps it stiller."
    best = min(judged, key=lambda s: abs(s["shift_per_doubling"]))
    rest = [s for s in judged if s is not best]
    margin = min(abs(s["shift_per_doubling"]) for s in rest) - abs(best["shift_per_doubling"])
    if margin < 0.1:
        return head + (f" The shifts differ by {margin:.2f} octaves per doubling: within what "
                       "a coarse grid and seed noise can tell apart, the rule makes no "
                       "difference here.")
    return head + f" **{best['parameterisation']}** keeps the optimum stillest."


STAGE = Stage(name="sweep", summary="the sweeps.grid at the base model, the same grid along "
              "sweeps.axes for each table, and the sweeps.extra blocks", after=("check",),
              run=run, done=lambda study: study.sweep_table, plan=plan, outputs=outputs,
              report=report, trains=True)
