"""Stage 2, sweep: the global HP grid at the base model, the same grid along each transfer
axis for each swept table, and the extra blocks (ablations). One runs table; the report's
transfer-curve, optimum-shift and ablation sections with their verdicts."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from ..analysis import (
    SHIFT_TOLERANCE,
    block_points,
    compare_shifts,
    main_block,
    optima,
    optimum_shift,
    seed_curves,
    seed_means,
    sweep_points,
    transfer_suboptimality,
)
from ..config import PlannedRun
from ..doc import fmt, fmt_interval
from ..estimate import Optimum, SeedCurve
from ..launch import launch
from ..scaling import (
    AXES,
    GROUP_SETS,
    GROUPS,
    HP_KINDS,
    check_hp_value,
    hp_value_allowed,
    split_hp_key,
)
from ..schema import Problems, suggest
from ..study import Study, plain_name_problem
from .base import (
    Context,
    Outputs,
    ReportContext,
    SeedUse,
    Stage,
    StagePlan,
    read_runs_table,
    read_selected,
    result_row,
    table_outputs,
    write_runs_table,
)

if TYPE_CHECKING:
    import polars as pl

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
class RefineSpec:
    """Adaptive sweeps: after the grid, rounds that add points near each curve's optimum until
    its interval is narrow enough. New points are ordinary runs (hashed, cached, resumable,
    tracked), tagged with their ``round``."""

    rounds: int = 0
    """Rounds after the grid (0: no refinement). Each round adds, to every curve whose
    optimum's 95% interval is wider than ``width`` because the grid is coarse there, the
    midpoints between its lowest point and its neighbours (halving the local spacing), and
    one point beyond the grid where the lowest loss sits at the grid's edge."""
    width: float = 0.5
    """Target width (octaves) of an optimum's 95% interval; a curve narrower than this is not
    refined further."""
    min_spacing: float = 0.125
    """Never refine below this spacing (octaves). A curve whose interval is limited by seed
    noise, not by the spacing, is not refined either: more seeds would narrow it, not more
    points."""
    extend: bool = True
    """Add a point one grid step beyond an edge where a curve's lowest loss sits."""

    def check(self, at: str, problems: Problems) -> None:
        problems.at_least(f"{at}.rounds", self.rounds, 0, "an integer >= 0")
        problems.positive(f"{at}.width", self.width)
        problems.positive(f"{at}.min_spacing", self.min_spacing)


@dataclass
class SweepSpec:
    """Global HP grids at the base model, and the same grid along the transfer axes."""

    grid: dict[str, list[float]] = field(default_factory=dict)
    """HP kind -> values at the base scale (e.g. ``lr: [0.002, 0.004, 0.008]``); the full
    product is swept at the base model. Empty: no sweep, the spec's ``hps`` are the optimum.
    ``group.kind`` (``qk_norms.eps``) sweeps one group's or group set's own base value."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Seeds of every sweep point (losses are averaged over them; intervals need two or
    more). These seeds choose: no judging run (targets, re-evaluations) may use them."""
    parameterisations: list[str] = field(default_factory=list)
    """Tables swept besides the study's own (e.g. ``[sp]``), for side-by-side transfer curves,
    as controls (the report compares each with the study's table) and for arms that use
    them."""
    axes: dict[str, list[int]] = field(default_factory=dict)
    """Transfer axes: ``width``, ``depth``, ``batch`` or ``tokens`` -> values of that field
    of the base model (the other fields stay). Each value gets the ``axes_kinds`` grid."""
    axes_kinds: list[str] = field(default_factory=lambda: ["lr"])
    """Grid kinds varied along the axes (others stay at the spec's ``hps``)."""
    extra: list[SweepBlock] = field(default_factory=list)
    """More transfer sweeps, each with its own tables, axes and grid (ablations); the report
    compares each block's first table with the others."""
    tolerance: float = SHIFT_TOLERANCE
    """Octaves per doubling of an axis the optimum may move for transfer to hold: the verdict
    is "holds" when the shift's 95% interval lies inside +-tolerance, "fails" when it lies
    outside, "cannot tell" otherwise."""
    refine: RefineSpec = field(default_factory=RefineSpec)
    """Adaptive refinement of the curves near their optima (single-kind curves)."""

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
        problems.range(f"{at}.tolerance", self.tolerance, 0 < self.tolerance <= 2,
                       "0 < tolerance <= 2 (octaves per doubling)")
        self.refine.check(f"{at}.refine", problems)


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
    base_scale = spec.models[spec.base].scale
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
    base_scale = spec.models[spec.base].scale
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
    notes = [f"{shared} shared points"] if shared else []
    refine = spec.sweeps.refine
    if refine.rounds and runs:
        # Each curve (one per table and scale, the base model's shared) gains at most two
        # points a round, on each of its seeds.
        curves = {(r.tags["block"], r.tags["parameterisation"], r.config.scale, len(fam.seeds))
                  for fam in refinable(spec) for r in runs if r.tags["block"] == fam.block}
        most = refine.rounds * 2 * sum(c[-1] for c in curves)
        notes.append(f"+ up to {most} refinement runs in {refine.rounds} round(s)")
    return StagePlan("sweep", len(unique), sum(r.tokens for r in unique.values()),
                     "; ".join(notes))


def run(ctx: Context) -> list[dict]:
    spec, study, echo = ctx.spec, ctx.study, ctx.echo
    runs = sweep_runs(spec)
    if not runs:
        echo("[sweep] no grid in the spec: nothing to sweep")
    results = launch(runs, study, spec.launcher, "sweep", ctx.on_result, echo)
    rows = [result_row(pr, results[pr.run_id]) for pr in runs]
    for round_ in range(1, spec.sweeps.refine.rounds + 1):
        more = refinement_runs(spec, rows, round_)
        if not more:
            echo(f"[sweep] refinement: every curve's optimum is resolved as far as "
                 f"sweeps.refine asks (round {round_} adds nothing)")
            break
        curves = len({(r.tags["block"], r.tags["parameterisation"], r.config.scale)
                      for r in more})
        echo(f"[sweep] refinement round {round_}: {len({r.run_id for r in more})} new runs "
             f"near the optima of {curves} curve(s)")
        results = launch(more, study, spec.launcher, "sweep", ctx.on_result, echo)
        rows += [result_row(pr, results[pr.run_id]) for pr in more]
    write_runs_table(study, "sweep", rows)
    return rows


# ---------------------------------------------------------------------------------------------
# Refinement.


@dataclass(frozen=True)
class Refinable:
    """A family of curves refinement works on: one varying kind, in the main sweep or a
    block, with the seeds of its points."""

    block: str
    kind: str
    seeds: tuple[int, ...]


def refinable(spec: Spec) -> list[Refinable]:
    """The single-kind curve families: the main sweep's axes (when one kind varies along
    them; the base grid too when it has one kind), and each block with a one-kind grid."""
    out = []
    sw = spec.sweeps
    axes_kinds = [k for k in sw.axes_kinds if k in sw.grid]
    if sw.grid and len(axes_kinds) == 1 and (sw.axes or len(sw.grid) == 1):
        out.append(Refinable("main", axes_kinds[0], tuple(sw.seeds)))
    out += [Refinable(b.name, next(iter(b.grid)), tuple(b.seeds))
            for b in sw.extra if len(b.grid) == 1]
    return out


def base_axis_values(spec: Spec) -> dict[str, int]:
    """Each swept axis's value at the base model (where the base grid sits on that axis)."""
    return {axis: getattr(spec.models[spec.base], axis) for axis in spec.sweeps.axes}


def fixed_values(spec: Spec) -> dict[str, float]:
    """The values the other grid kinds are held at along a one-kind curve: the spec's hps."""
    return {k: spec.hps.get(k) for k in spec.sweeps.grid}


def family_points(spec: Spec, sweep: pl.DataFrame, fam: Refinable) -> pl.DataFrame:
    """The rows of one curve family in `cp.analysis.sweep_points`'s shape."""
    if fam.block == "main":
        return sweep_points(main_block(sweep), base_axis_values(spec) or {"base": 0},
                            fam.kind, fixed_values(spec))
    return block_points(sweep, fam.block, fam.kind)


def _new_values(curve: SeedCurve, refine: RefineSpec, kind: str) -> list[float]:
    """log2 values to add to ``curve``: beyond an edge where its lowest loss sits, or the
    midpoints beside its argmin while its optimum's interval is wider than asked because of
    the grid's spacing."""
    opt = curve.optimum()
    if opt is None or len(opt.x) < 2:
        return []
    x, i = opt.x, opt.window.argmin
    if opt.at_edge:
        if not refine.extend:
            return []
        step = x[1] - x[0] if i == 0 else x[-1] - x[-2]
        new = x[0] - step if i == 0 else x[-1] + step
        return [new] if hp_value_allowed(kind, 2.0 ** new) is None else []
    o = opt.log2_opt
    if (o.known and o.width <= refine.width) or _below_noise(curve, opt):
        return []
    return [(x[i] + x[j]) / 2 for j in (i - 1, i + 1)
            if 0 <= j < len(x) and abs(x[i] - x[j]) / 2 >= refine.min_spacing - 1e-9]


def _below_noise(curve: SeedCurve, opt: Optimum) -> bool:
    """Whether the argmin's neighbours are within twice the seed noise of the argmin's
    seed-mean loss: the curve is flat at this spacing as far as the seeds can tell, so finer
    points cannot place its optimum (more seeds can). One seed: no noise estimate, False."""
    idx = curve.finite_points()
    rows = curve.losses[:, idx]
    n = rows.shape[0]
    if n < 2:
        return False
    mean = curve.mean()[idx]
    lo, hi, i = opt.window.lo, opt.window.hi, opt.window.argmin
    sd = float(np.sqrt(np.nanmean(np.nanvar(rows[:, lo:hi + 1], axis=0, ddof=1))))
    gaps = [mean[j] - mean[i] for j in (i - 1, i + 1) if 0 <= j < len(mean)]
    return bool(gaps) and min(gaps) < 2 * sd / np.sqrt(n)


def _snap(log2_value: float) -> float:
    """An HP value from its log2, rounded to 12 significant digits (stable run ids)."""
    return float(f"{2.0 ** log2_value:.12g}")


def refinement_runs(spec: Spec, rows: list[dict], round_: int) -> list[PlannedRun]:
    """The next round's runs: for every refinable curve that asks for points, its new points
    on every seed of the curve, tagged as the grid's runs are (a point at the base model
    serves every axis, as the base grid does)."""
    import polars as pl

    sweep = pl.DataFrame(rows, infer_schema_length=None)
    kind_of = {k: split_hp_key(k)[1] for k in [*spec.sweeps.grid, *(k for b in
                                                                    spec.sweeps.extra
                                                                    for k in b.grid)]}
    base = spec.models[spec.base]
    runs = []
    for fam in refinable(spec):
        points = family_points(spec, sweep, fam)
        if points.is_empty():
            continue
        wanted: dict[tuple[str, str, Any], set[float]] = {}
        for (table, axis, value), curve in seed_curves(points, fam.kind).items():
            new = _new_values(curve, spec.sweeps.refine, kind_of.get(fam.kind, fam.kind))
            at_base = fam.block == "main" and value == base_axis_values(spec).get(axis)
            where = (table, "base", None) if at_base or axis == "base" else (table, axis, value)
            wanted.setdefault(where, set()).update(_snap(v) for v in new)
        for (table, axis, value), values in wanted.items():
            pcfg = spec.table_config(table)
            scale = base if axis == "base" else dataclasses.replace(base, **{axis: value})
            for v in sorted(values):
                point = {**({k: spec.hps.get(k) for k in spec.sweeps.grid if k != fam.kind}
                            if fam.block == "main" else {}), fam.kind: v}
                for seed in fam.seeds:
                    cfg = spec.run_config(spec.base, scale=scale, parameterisation=pcfg,
                                          hps=spec.hps.with_values(point), seed=seed)
                    runs.append(PlannedRun(cfg, {
                        "stage": "sweep", "block": fam.block, "axis": axis,
                        "axis_value": value, "parameterisation": table, "seed": seed,
                        **point, "round": round_}))
    return runs


def outputs(study: Study) -> Outputs:
    return table_outputs(study, "sweep")


# ---------------------------------------------------------------------------------------------
# Report.


def report(rc: ReportContext) -> None:
    transfer_section(rc)
    ablation_section(rc)


def _shift_text(s: dict) -> str:
    return fmt_interval(s["shift_per_doubling"], s["ci_low"], s["ci_high"], signed=True)


def _transfer_claim(kind: str, s: dict, sub: Optional[dict], label: str = "") -> str:
    """One verdict paragraph: what the data say about ``kind`` along an axis under a table
    (``label`` heads it, e.g. the ablation block's name)."""
    axis, table = s["axis"], s["parameterisation"]
    span = (f"{axis} {s['from_value']} to {s['to_value']}, {s['points']} points, "
            f"{s['seeds']} seed(s)")
    head = {"holds": f"**{label}{kind} transfers across {axis} under {table}**",
            "fails": f"**{label}{kind} does not transfer across {axis} under {table}**",
            "cannot tell": f"**{label}{'c' if label else 'C'}annot tell whether {kind} "
                           f"transfers across {axis} under {table}**"}[s["verdict"]]
    moved = ("" if s["shift_per_doubling"] is None else
             f": the optimum moves {_shift_text(s)} octaves per doubling of {axis} ({span})")
    text = f"{head}{moved}; {s['why']}."
    if sub is not None and sub.get("suboptimality") is not None:
        price = fmt_interval(sub["suboptimality"], sub["sub_low"], sub["sub_high"])
        text += (f" Transferring the base optimum to {axis} {sub['axis_value']} costs {price} "
                 "nats against that point's own optimum" +
                 (": below what the seeds and grid resolve." if sub["resolved"] is False
                  else "."))
    return text


def transfer_section(rc: ReportContext) -> None:
    """Loss against each swept HP along each axis; optima and their shift per doubling with
    95% intervals, verdicts, the comparison with every other swept table (the controls), the
    loss given up by transferring, and the exponent that would have kept the optimum still.
    Leaves the suboptimality rows in ``rc.notes["suboptimality"]`` (a target whose scale a
    sweep covered was tuned directly)."""
    import polars as pl

    from ..plots import plot_optimum_shift, plot_transfer_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not study.sweep_table.exists() or not spec.sweeps.axes:
        return
    sweep = main_block(read_runs_table(study, "sweep"))
    selected = read_selected(study) if study.select_file.exists() else {}
    kinds = [k for k in spec.sweeps.axes_kinds if k in spec.sweeps.grid]
    tol = spec.sweeps.tolerance
    doc.h(1, "Transfer sweeps")
    doc.p("Final validation loss against the base value of each swept HP at several points of "
          "each axis, the HPs transferred from the base model by each parameterisation. Where "
          "transfer holds, the minima line up. Each optimum is the minimum of a local cubic "
          "through the lowest point of the seed-mean curve and two points on each side "
          "(`cp.estimate`); its 95% interval is a jackknife over seeds (Student's t), widened "
          "by a quarter of the local grid spacing for the grid's own resolution. The shift "
          "per doubling is the slope of log2(optimum) against log2(axis value), with its "
          f"interval from the same jackknife. Transfer **holds** when that interval lies inside "
          f"±{tol:g} octaves per doubling (`sweeps.tolerance`), **fails** when it lies "
          "outside, and otherwise the report **cannot tell** and says what would decide it. "
          "The suboptimality is the loss at the base optimum carried to a point minus the "
          "loss at that point's own optimum, both read off the same local fit.")
    all_sub: list[dict] = []
    tables = sweep_tables(spec)
    for kind in kinds:
        points = sweep_points(sweep, base_axis_values(spec), kind, fixed_values(spec))
        if points.is_empty():
            continue
        opt = optima(points, kind)
        shifts = optimum_shift(points, kind, tol)
        chosen = {t: s["values"][kind] for t, s in selected.items() if kind in s["values"]}
        sub = transfer_suboptimality(points, chosen, kind)
        sub_rows = sub.to_dicts() if not sub.is_empty() else []
        all_sub += [{**r, "kind": kind} for r in sub_rows]
        means = seed_means(points, kind).to_dicts()
        for axis in spec.sweeps.axes:
            rows = [m for m in means if m["axis"] == axis]
            marks = {(r["parameterisation"], r["axis_value"]): (r["opt"], r["opt_low"],
                                                                r["opt_high"])
                     for r in opt.filter(pl.col("axis") == axis).to_dicts()}
            fig = study.report_figure(f"transfer_{axis}_{kind}")
            plot_transfer_curves(rows, axis, fig, kind=kind, optima=marks)
            doc.h(2, f"{kind} across {axis}")
            doc.fig(fig, f"final loss against base {kind} (seed means; bars: lowest to highest "
                    f"seed), one line per {axis}, one panel per parameterisation; dashed: "
                    "the optimum, shaded: its 95% interval")
            doc.table(["parameterisation", axis, f"optimal {kind} [95% CI]", "seeds",
                       "loss at optimum", "loss at transferred", "suboptimality [95% CI]"],
                      [[r["parameterisation"], str(r["axis_value"]),
                        _opt_text(r), str(r["seeds"]), fmt(r["opt_loss"]),
                        fmt(r["loss_transferred"]), _price_text(r)]
                       for r in sub_rows if r["axis"] == axis])
        fig = study.report_figure(f"optimum_shift_{kind}")
        plot_optimum_shift(opt.to_dicts(), shifts.to_dicts(), fig, kind)
        doc.h(2, f"Shift of the optimal {kind}")
        doc.fig(fig, f"optimal {kind} against each axis (log-log) with 95% intervals: flat "
                "lines transfer")
        doc.table(["parameterisation", "axis", "octaves per doubling [95% CI]", "verdict",
                   "why"],
                  [[s["parameterisation"], s["axis"], _shift_text(s), s["verdict"], s["why"]]
                   for s in shifts.to_dicts()])
        for s in shifts.to_dicts():
            last = [r for r in sub_rows if r["parameterisation"] == s["parameterisation"]
                    and r["axis"] == s["axis"] and r["axis_value"] == s["to_value"]]
            found.claim("transfer", _transfer_claim(kind, s, last[0] if last else None),
                        kind=kind, axis=s["axis"], parameterisation=s["parameterisation"],
                        shift_per_doubling=s["shift_per_doubling"], ci_low=s["ci_low"],
                        ci_high=s["ci_high"], verdict=s["verdict"], tolerance=tol,
                        suboptimality=last[0]["suboptimality"] if last else None)
            found.metric(f"shift.{kind}.{s['axis']}.{s['parameterisation']}",
                         s["shift_per_doubling"], s["ci_low"], s["ci_high"])
            if last:
                found.metric(f"suboptimality.{kind}.{s['axis']}.{s['parameterisation']}",
                             last[0]["suboptimality"], last[0]["sub_low"],
                             last[0]["sub_high"])
        comparisons_section(rc, points, kind, list(spec.sweeps.axes), tables[0], tables[1:])
        rules_section(rc, shifts, kind)
    rc.notes["suboptimality"] = all_sub


def _opt_text(r: dict) -> str:
    if r["opt"] is None:
        return "-"
    if r["at_edge"]:
        return f"{fmt(r['opt'])} (at the grid's edge: may lie beyond)"
    return fmt_interval(r["opt"], r["opt_low"], r["opt_high"]) if r["opt_low"] is not None \
        else f"{fmt(r['opt'])} (one seed)"


def _price_text(r: dict) -> str:
    if r.get("suboptimality") is None:
        return "-"
    text = fmt_interval(r["suboptimality"], r["sub_low"], r["sub_high"])
    return text if r["resolved"] or r["sub_low"] is None else f"{text}: below resolution"


def comparisons_section(rc: ReportContext, points: pl.DataFrame, kind: str, axes: list[str],
                        table: str, controls: list[str]) -> None:
    """``table`` against each control along each axis, paired over seeds: which keeps the
    optimum stiller, with the interval of the difference of their |shifts|."""
    rows = []
    for axis in axes:
        for control in controls:
            c = compare_shifts(points, kind, axis, table, control)
            if c is None:
                continue
            diff = fmt_interval(c["difference"], c["ci_low"], c["ci_high"], signed=True)
            rows.append([axis, f"{table} vs {control}", diff, c["verdict"]])
            text = (f"**{kind} along {axis}, {table} against the control {control}**: the "
                    f"absolute shifts differ by {diff} octaves per doubling (negative: "
                    f"{table} is stiller; paired over {c['seeds']} seed(s)): "
                    + ("cannot tell which keeps the optimum stiller; more seeds or a wider "
                       f"range of {axis} would." if c["verdict"] == "cannot tell"
                       else f"{c['verdict']}."))
            rc.found.claim("comparison", text, kind=kind, axis=axis, table=table,
                           control=control, difference=c["difference"], ci_low=c["ci_low"],
                           ci_high=c["ci_high"], verdict=c["verdict"])
            rc.found.metric(f"compare.{kind}.{axis}.{table}.vs.{control}", c["difference"],
                            c["ci_low"], c["ci_high"])
    if rows:
        rc.doc.h(2, f"Against the controls ({kind})")
        rc.doc.p("Each table against the same study without its rules (a control): the "
                 "difference of the absolute shifts per doubling, paired over seeds (leave "
                 "one seed out of both). Negative: the first table keeps the optimum stiller.")
        rc.doc.table(["axis", "comparison", "difference of absolute shifts [95% CI]",
                      "verdict"], rows)


def fitted_rules(spec: Spec, shifts: pl.DataFrame, kind: str) -> list[dict[str, Any]]:
    """For each (table, axis) of ``shifts``: the exponent that would have kept the optimum of
    ``kind`` still, per group, as the table's exponent plus the measured shift (with its
    interval). ``kind`` may be ``group.kind``: then only that group set's rule."""
    from ..scaling import expand_groups

    group_set, base_kind = split_hp_key(kind)
    out = []
    for s in shifts.to_dicts():
        if s["shift_per_doubling"] is None:
            continue
        table = spec.table_config(s["parameterisation"]).build()
        groups = expand_groups([group_set]) if group_set else list(GROUPS)
        for g in groups:
            now = table.rule(g, base_kind).values(table.alpha)[s["axis"]]
            out.append({"table": table.name, "axis": s["axis"], "kind": base_kind,
                        "group": g, "exponent": now,
                        "fitted": now + s["shift_per_doubling"],
                        "ci_low": None if s["ci_low"] is None else now + s["ci_low"],
                        "ci_high": None if s["ci_high"] is None else now + s["ci_high"],
                        "verdict": s["verdict"]})
    return out


def study_fitted_rules(spec: Spec, study: Study) -> list[dict[str, Any]]:
    """`fitted_rules` of every swept kind along every axis of the study: the main sweep's
    axes and the extra blocks'."""

    if not study.sweep_table.exists():
        return []
    sweep = read_runs_table(study, "sweep")
    tol = spec.sweeps.tolerance
    rows: list[dict[str, Any]] = []
    if spec.sweeps.axes:
        for kind in (k for k in spec.sweeps.axes_kinds if k in spec.sweeps.grid):
            points = sweep_points(main_block(sweep), base_axis_values(spec), kind,
                                  fixed_values(spec))
            if not points.is_empty():
                rows += fitted_rules(spec, optimum_shift(points, kind, tol), kind)
    for block in spec.sweeps.extra:
        for kind in block.grid:
            points = block_points(sweep, block.name, kind)
            if not points.is_empty():
                rows += fitted_rules(spec, optimum_shift(points, kind, tol), kind)
    return rows


def fitted_rules_yaml(rows: list[dict[str, Any]], table: str, source: str) -> str:
    """The fitted exponents of ``table`` as a ``tables:`` block ready for a spec (groups with
    equal exponents share a line), each commented with its interval."""
    mine = [r for r in rows if r["table"] == table]
    lines = [f"# Fitted from {source}: per axis, the exponent that would have kept each",
             "# swept optimum still = the table's exponent + the measured shift per doubling",
             "# [95% CI]. Rules whose shift holds within the tolerance need no change.",
             "tables:", f"  {table}_fitted:", f"    base: {table}", "    rules:"]
    by: dict[tuple, list[str]] = {}
    for r in mine:
        by.setdefault((r["kind"], r["axis"], round(r["fitted"], 4), r["verdict"],
                       r["exponent"], r["ci_low"], r["ci_high"]), []).append(r["group"])
    for (kind, axis, fitted, word, now, lo, hi), groups in by.items():
        ci = "no interval" if lo is None else f"95% CI [{lo:+.3f}, {hi:+.3f}]"
        for g in _as_group_sets(groups):
            lines.append(f"      {g}: {{{kind}: {{{axis}: {fitted:.4g}}}}}   # was {now:+.3g}; "
                         f"{ci}; shift {word}")
    return "\n".join(lines) + "\n"


def _as_group_sets(groups: list[str]) -> list[str]:
    """``groups`` named by the largest group sets they fill (``hidden``, ``gains``...), the
    rest one by one."""
    left, out = list(groups), []
    for name, members in sorted(GROUP_SETS.items(), key=lambda kv: -len(kv[1])):
        if len(members) > 1 and all(m in left for m in members):
            out.append(name)
            left = [g for g in left if g not in members]
    return out + left


def rules_section(rc: ReportContext, shifts: pl.DataFrame, kind: str) -> None:
    """The exponents the data want, for the study's table (`cpt fit-rules` prints them as a
    ``tables:`` block)."""
    table = rc.spec.parameterisation.name
    rows = [r for r in fitted_rules(rc.spec, shifts, kind) if r["table"] == table]
    if not rows:
        return
    seen: dict[tuple, dict] = {}
    for r in rows:
        seen.setdefault((r["axis"], r["exponent"]), r)
    rc.doc.h(2, f"The {kind} exponents the data want ({table})")
    rc.doc.p(f"Per axis, the exponent of {kind} that would have kept the optimum still: the "
             "table's exponent plus the measured shift per doubling (the same for every group "
             f"with that exponent). `cpt fit-rules {rc.study.root}` prints them as a ready "
             "`tables:` override.")
    rc.doc.table(["axis", "groups' exponent now", "fitted [95% CI]", "shift verdict"],
                 [[r["axis"], f"{r['exponent']:+.3g}",
                   fmt_interval(r["fitted"], r["ci_low"], r["ci_high"], signed=True),
                   r["verdict"]] for r in seen.values()])
    for r in seen.values():
        rc.found.metric(f"fitted_exponent.{kind}.{r['axis']}.{table}.{r['group']}",
                        r["fitted"], r["ci_low"], r["ci_high"])


def ablation_section(rc: ReportContext) -> None:
    """Each extra sweep block: the swept HP's optimum along the block's axis under each of its
    tables, with intervals and verdicts, and the block's first table against the others."""
    import polars as pl

    from ..plots import plot_transfer_curves

    spec, study, doc, found = rc.spec, rc.study, rc.doc, rc.found
    if not spec.sweeps.extra or not study.sweep_table.exists():
        return
    sweep = read_runs_table(study, "sweep")
    tol = spec.sweeps.tolerance
    doc.h(1, "Ablations")
    doc.p("Each block sweeps the HP a rule governs along the axis the rule is about, under "
          "tables with and without the rule. A rule that is right keeps the optimum still: "
          "its optimum moves fewer octaves per doubling of the axis. The block's first table "
          "is compared with each of the others, paired over seeds.")
    for block in spec.sweeps.extra:
        for kind in block.grid:
            points = block_points(sweep, block.name, kind)
            if points.is_empty():
                continue
            opt = optima(points, kind)
            shifts = optimum_shift(points, kind, tol)
            means = seed_means(points, kind).to_dicts()
            for axis in block.axes:
                marks = {(r["parameterisation"], r["axis_value"]): (r["opt"], r["opt_low"],
                                                                    r["opt_high"])
                         for r in opt.filter(pl.col("axis") == axis).to_dicts()}
                fig = study.report_figure(f"ablation_{block.name}_{kind}_{axis}")
                plot_transfer_curves([m for m in means if m["axis"] == axis], axis, fig,
                                     kind=kind, optima=marks)
                doc.h(2, f"{block.name}: {kind} across {axis}")
                doc.fig(fig, f"final loss against base {kind}, one line per {axis}, one panel "
                        "per table; dashed: the optimum, shaded: its 95% interval")
            doc.table(["table", "axis", "octaves per doubling [95% CI]", "verdict", "why"],
                      [[s["parameterisation"], s["axis"], _shift_text(s), s["verdict"],
                        s["why"]] for s in shifts.to_dicts()])
            for s in shifts.to_dicts():
                found.metric(f"ablation.{block.name}.{s['parameterisation']}",
                             s["shift_per_doubling"], s["ci_low"], s["ci_high"])
                found.claim("ablation", _transfer_claim(kind, s, None,
                                                        f"Ablation {block.name}: "),
                            block=block.name, kind=kind, axis=s["axis"],
                            parameterisation=s["parameterisation"],
                            shift_per_doubling=s["shift_per_doubling"], ci_low=s["ci_low"],
                            ci_high=s["ci_high"], verdict=s["verdict"])
            comparisons_section(rc, points, kind, list(block.axes), block.parameterisations[0],
                                block.parameterisations[1:])


def seeds(spec: Spec) -> list[SeedUse]:
    """Every sweep chooses: the optimum it finds is what the study transfers."""
    uses = [SeedUse("choose", s, f"sweeps.seeds[{i}]") for i, s in enumerate(spec.sweeps.seeds)
            ] if spec.sweeps.grid else []
    for b, block in enumerate(spec.sweeps.extra):
        uses += [SeedUse("choose", s, f"sweeps.extra[{b}].seeds[{i}]")
                 for i, s in enumerate(block.seeds)]
    return uses


STAGE = Stage(name="sweep", summary="the sweeps.grid at the base model, the same grid along "
              "sweeps.axes for each table, and the sweeps.extra blocks", after=("check",),
              run=run, done=lambda study: study.sweep_table, plan=plan, outputs=outputs,
              report=report, trains=True, seeds=seeds)
