"""Numbers from a study's tables: optima along the transfer axes and their shift per doubling,
the transfer suboptimality, speedups -- each from seeds with its interval (`cp.estimate`), and
each verdict one of holds / fails / cannot tell. Plain data and polars frames in, numbers and
frames out; which files hold the tables is the stages' business.

Losses of diverged or failed runs count as +inf: they lose every comparison and never enter a
fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from .estimate import (
    Interval,
    SeedCurve,
    fit_minimum,
    interval,
    jackknife,
    slope,
    slope_weights,
    t_quantile,
    value_at,
)

if TYPE_CHECKING:
    import polars as pl

Curve = Sequence[tuple[float, float]]  # (step, loss)

SHIFT_TOLERANCE = 0.25
"""Default of ``sweeps.tolerance``: octaves (log2 units) the optimum of an HP may move per
doubling of an axis for transfer to hold. Over a 16x scale-up (4 doublings) it allows one
octave, a factor of 2 in the HP: about what a grid of octaves resolves."""


def line_curve(rows: Sequence[dict], kind: str) -> Optional[SeedCurve]:
    """One curve (loss against log2 of ``kind``, per seed) from rows with ``kind``, ``seed``
    and ``loss``; None without rows."""
    if not rows:
        return None
    values = sorted({float(r[kind]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    losses = np.full((len(seeds), len(values)), np.nan)
    for r in rows:
        losses[seeds.index(int(r["seed"])), values.index(float(r[kind]))] = r["loss"]
    return SeedCurve([math.log2(v) for v in values], losses, seeds)


def select_optimum(rows: Sequence[dict], kinds: Sequence[str], method: str = "fit") -> dict:
    """The global optimum over the base model's grid (rows: the grid values, ``seed``,
    ``loss``).

    ``argmin``: the grid point with the lowest seed-mean loss. ``fit``: each kind's optimum
    along the grid line through that point (other kinds held there), by the estimator of
    `cp.estimate` (with its interval over seeds, in ``intervals``).
    """
    means: dict[tuple, list[float]] = {}
    for r in rows:
        means.setdefault(tuple(float(r[k]) for k in kinds), []).append(r["loss"])
    mean = {p: (math.inf if any(math.isinf(v) for v in ls) else float(np.mean(ls)))
            for p, ls in means.items()}
    finite = {p: v for p, v in mean.items() if math.isfinite(v)}
    if not finite:
        raise ValueError("every sweep point diverged or failed: no optimum to select")
    best = min(finite, key=lambda p: finite[p])
    values = dict(zip(kinds, best, strict=True))
    fitted: dict[str, bool] = {}
    intervals: dict[str, dict] = {}
    if method == "fit":
        for kind in kinds:
            line = [r for r in rows if all(float(r[k]) == best[j] for j, k in enumerate(kinds)
                                           if k != kind)]
            curve = line_curve(line, kind)
            opt = curve.optimum() if curve is not None else None
            fitted[kind] = (opt is not None and opt.window.hi - opt.window.lo >= 2
                            and not opt.at_edge)
            if opt is not None and fitted[kind]:
                values[kind] = 2.0 ** opt.log2_opt.estimate
                intervals[kind] = {"low": _pow2(opt.log2_opt.low),
                                   "high": _pow2(opt.log2_opt.high),
                                   "seeds": opt.log2_opt.seeds, "at_edge": opt.at_edge}
    return {"values": values, "argmin": dict(zip(kinds, best, strict=True)),
            "loss": float(finite[best]), "method": method, "fitted": fitted,
            "intervals": intervals}


def _pow2(x: Optional[float]) -> Optional[float]:
    return None if x is None else float(2.0 ** x)


def steps_to_reach(curve: Curve, loss: float) -> Optional[float]:
    """First (linearly interpolated) step at which ``curve`` gets down to ``loss``."""
    prev: Optional[tuple[float, float]] = None
    for step, value in curve:
        if value <= loss:
            if prev is None or prev[1] == value:
                return float(step)
            s0, v0 = prev
            return float(s0 + (step - s0) * (v0 - loss) / (v0 - value))
        prev = (step, value)
    return None


def speedup(baseline: Curve, candidate: Curve) -> float:
    """How much faster ``candidate`` reaches what ``baseline`` reaches at its end.

    Steps the baseline needs for its final loss divided by the steps the candidate needs for
    the same loss. When the candidate never gets there, the ratio is taken the other way round
    (the steps the baseline needs for the candidate's final loss over the candidate's steps),
    which is below 1.
    """
    (t_base, l_base), (t_cand, l_cand) = baseline[-1], candidate[-1]
    t = steps_to_reach(candidate, l_base)
    if t is not None and t > 0:
        return t_base / t
    t = steps_to_reach(baseline, l_cand)
    return (t / t_cand) if t is not None else math.nan


def mean_curve(curves: Sequence[Curve]) -> list[tuple[float, float]]:
    """Pointwise mean of curves evaluated at the same steps (seeds of one configuration)."""
    if not curves:
        return []
    steps = [s for s, _ in curves[0]]
    for c in curves[1:]:
        if [s for s, _ in c] != steps:
            raise ValueError("curves were evaluated at different steps")
    return [(s, float(np.mean([c[i][1] for c in curves]))) for i, s in enumerate(steps)]


def eval_curve(result_dict: dict) -> list[tuple[float, float]]:
    return [(e["step"], e["val_loss"]) for e in result_dict.get("eval_curve", [])]


# ---------------------------------------------------------------------------------------------
# Study-level tables (polars): optima along the transfer axes, their shift, transfer
# suboptimality, speedups with a confidence interval over seeds.


def sweep_points(sweep: pl.DataFrame, base_values: dict[str, int], kind: str = "lr",
                 fixed: Optional[dict[str, float]] = None) -> pl.DataFrame:
    """The sweep along each axis as rows (parameterisation, axis, axis_value, ``kind``, seed,
    loss, scale): the base model's grid is each axis's point at the base value (its rows where
    the other grid kinds sit at ``fixed``), and a run planned twice counts once."""
    import polars as pl

    fixed = fixed or {}
    base = sweep.filter(pl.col("axis") == "base")
    for k, v in fixed.items():
        if k != kind and k in base.columns:
            base = base.filter(pl.col(k) == v)
    frames = []
    for axis, value in base_values.items():
        frames.append(base.with_columns(pl.lit(axis).alias("axis"),
                                        pl.lit(value, pl.Int64).alias("axis_value")))
        frames.append(sweep.filter(pl.col("axis") == axis))
    if not frames:
        return sweep.clear()
    cols = ["parameterisation", "axis", "axis_value", kind, "seed", "loss", "width", "depth",
            "batch", "tokens", "seq_len", "run_id"]
    out = pl.concat([f.select([c for c in cols if c in f.columns]) for f in frames],
                    how="diagonal_relaxed")
    return out.unique(["parameterisation", "axis", "axis_value", kind, "seed"], keep="first",
                      maintain_order=True)


def block_points(sweep: pl.DataFrame, block: str, kind: str = "lr") -> pl.DataFrame:
    """An extra sweep block's rows in the shape of `sweep_points` (its axes carry their own
    values; a run planned twice counts once)."""
    import polars as pl

    sub = sweep.filter(pl.col("block") == block) if "block" in sweep.columns else sweep.clear()
    cols = ["parameterisation", "axis", "axis_value", kind, "seed", "loss", "width", "depth",
            "batch", "tokens", "seq_len", "run_id"]
    if kind not in sub.columns:
        return sub.clear()
    return sub.select([c for c in cols if c in sub.columns]).unique(
        ["parameterisation", "axis", "axis_value", kind, "seed"], keep="first",
        maintain_order=True)


def main_block(sweep: pl.DataFrame) -> pl.DataFrame:
    """The main sweep's rows (the base grid and its axes), without the extra blocks."""
    import polars as pl

    return sweep.filter(pl.col("block") == "main") if "block" in sweep.columns else sweep


def seed_means(points: pl.DataFrame, kind: str) -> pl.DataFrame:
    """Loss averaged over seeds per (parameterisation, axis, axis_value, kind): inf when any
    seed diverged or failed (a point that diverges on some seeds is not an optimum); with the
    lowest and highest seed's loss (``loss_min``, ``loss_max``)."""
    import polars as pl

    return (points.group_by(["parameterisation", "axis", "axis_value", kind], maintain_order=True)
            .agg(pl.when(pl.col("loss").is_infinite().any()).then(float("inf"))
                 .otherwise(pl.col("loss").mean()).alias("loss"),
                 pl.col("loss").min().alias("loss_min"), pl.col("loss").max().alias("loss_max"),
                 pl.len().alias("seeds"),
                 *(pl.col(c).first() for c in ("width", "depth", "batch", "tokens", "seq_len")
                   if c in points.columns)))


def seed_curves(points: pl.DataFrame, kind: str) -> dict[tuple, SeedCurve]:
    """One curve per (parameterisation, axis, axis_value) of `sweep_points`-shaped rows."""
    out: dict[tuple, SeedCurve] = {}
    keys = ["parameterisation", "axis", "axis_value"]
    for key, g in points.group_by(keys, maintain_order=True):
        curve = line_curve(g.to_dicts(), kind)
        if curve is not None:
            out[tuple(key)] = curve
    return out


def _scale_columns(points: pl.DataFrame, key: tuple) -> dict[str, Any]:
    import polars as pl

    sub = points.filter((pl.col("parameterisation") == key[0]) & (pl.col("axis") == key[1])
                        & (pl.col("axis_value") == key[2]))
    return {c: sub[c][0] for c in ("width", "depth", "batch", "tokens", "seq_len")
            if c in sub.columns and sub.height}


def optima(points: pl.DataFrame, kind: str = "lr") -> pl.DataFrame:
    """Per (parameterisation, axis, axis_value): the optimal ``kind`` by the estimator of
    `cp.estimate` with its 95% interval over seeds (``opt``, ``opt_low``, ``opt_high``; log2
    too), the loss there, the grid argmin, ``at_edge`` (the lowest loss is the grid's first
    or last value, so the optimum may lie beyond it), the local grid spacing and what limits
    the interval (``seeds`` or ``points``)."""
    import polars as pl

    rows = []
    for key, curve in seed_curves(points, kind).items():
        row: dict[str, Any] = {**dict(zip(["parameterisation", "axis", "axis_value"], key,
                                          strict=True)), "kind": kind,
                               **_scale_columns(points, key), "seeds": len(curve.seeds)}
        opt = curve.optimum()
        if opt is None:
            rows.append({**row, "points": 0, "opt": None, "opt_low": None, "opt_high": None,
                         "log2_opt": None, "log2_low": None, "log2_high": None,
                         "opt_loss": None, "argmin": None, "fitted": False, "at_edge": False,
                         "spacing": None, "limited_by": "points"})
            continue
        o = opt.log2_opt
        rows.append({**row, "points": opt.points, "opt": 2.0 ** o.estimate,
                     "opt_low": _pow2(o.low), "opt_high": _pow2(o.high),
                     "log2_opt": o.estimate, "log2_low": o.low, "log2_high": o.high,
                     "opt_loss": opt.loss.estimate, "argmin": 2.0 ** opt.argmin,
                     "fitted": opt.window.hi - opt.window.lo >= 2 and not opt.at_edge,
                     "at_edge": opt.at_edge,
                     "spacing": opt.spacing, "limited_by": o.limited_by()})
    return pl.DataFrame(rows, infer_schema_length=None)


@dataclass(frozen=True)
class Shift:
    """How far the optimum of an HP moves per doubling of an axis, with its interval."""

    parameterisation: str
    axis: str
    kind: str
    interval: Interval
    axis_values: list[int]
    edges: list[int]
    """Axis values whose lowest loss sits at the grid's edge (the optimum may lie beyond)."""
    seeds: int

    @property
    def value(self) -> float:
        return self.interval.estimate


def _shift_of(curves: dict[Any, SeedCurve], axis_values: list[int]) -> Optional[Interval]:
    """The slope of log2(optimum) against log2(axis value) over ``curves`` (one per axis
    value), jackknifed over the seeds they share (leave one seed out of every curve)."""
    seeds = sorted(set().union(*(set(c.seeds) for c in curves.values())))
    opts = {v: c.optimum() for v, c in curves.items()}
    if len(curves) < 2 or any(o is None for o in opts.values()):
        return None
    xs = [math.log2(v) for v in axis_values]
    windows = {v: o.window for v, o in opts.items() if o is not None}

    def at(keep: np.ndarray) -> float:
        kept = {seeds[i] for i in np.flatnonzero(keep)}
        ys = []
        for v in axis_values:
            c = curves[v]
            mask = np.array([s in kept for s in c.seeds])
            if not mask.any():
                return math.nan
            idx = c.finite_points()
            ys.append(fit_minimum(c.x[idx], c.mean(mask)[idx], windows[v])[0])
        return slope(xs, ys)

    weights = slope_weights(xs)
    resolution = math.sqrt(sum((w * (o.log2_opt.resolution if o else 0.0)) ** 2
                               for w, o in zip(weights, (opts[v] for v in axis_values),
                                               strict=True)))
    return jackknife(len(seeds), at, resolution)


def optimum_shift(points: pl.DataFrame, kind: str = "lr",
                  tolerance: float = SHIFT_TOLERANCE) -> pl.DataFrame:
    """Per (parameterisation, axis): the shift of the optimum per doubling of the axis (the
    slope of log2(optimum) against log2(axis value)) with its 95% interval over seeds, and the
    verdict against ``tolerance`` (`verdict`)."""
    import polars as pl

    curves = seed_curves(points, kind)
    opt = optima(points, kind)
    rows = []
    for (table, axis), g in opt.sort(["parameterisation", "axis", "axis_value"]).group_by(
            ["parameterisation", "axis"], maintain_order=True):
        values = g["axis_value"].to_list()
        shift = _shift_of({v: curves[(table, axis, v)] for v in values}, values)
        edges = g.filter(pl.col("at_edge"))["axis_value"].to_list()
        s = Shift(table, axis, kind, shift or Interval(math.nan, None, None, 0), values, edges,
                  max(g["seeds"].to_list()))
        word, why = verdict(s, tolerance)
        ok = g.filter(pl.col("opt").is_not_null())
        rows.append({"parameterisation": table, "axis": axis, "kind": kind,
                     "shift_per_doubling": None if shift is None else shift.estimate,
                     "ci_low": None if shift is None else shift.low,
                     "ci_high": None if shift is None else shift.high,
                     "points": ok.height, "seeds": s.seeds, "from_value": min(values),
                     "to_value": max(values), "opt_from": ok["opt"][0] if ok.height else None,
                     "opt_to": ok["opt"][-1] if ok.height else None, "edges": edges,
                     "inconclusive": word == "cannot tell", "verdict": word, "why": why,
                     "holds": {"holds": True, "fails": False}.get(word),
                     "tolerance": tolerance})
    return pl.DataFrame(rows, infer_schema_length=None)


def verdict(s: Shift, tolerance: float) -> tuple[str, str]:
    """``holds`` when the shift's interval lies inside +-``tolerance``, ``fails`` when it
    lies outside, ``cannot tell`` otherwise; with what the verdict rests on or what would
    decide it."""
    i = s.interval
    span = f"{s.axis} {min(s.axis_values)} to {max(s.axis_values)}" if s.axis_values else ""
    if s.edges:
        at = ", ".join(str(v) for v in s.edges)
        return "cannot tell", (f"the lowest loss at {s.axis} {at} is at the edge of the "
                               f"{s.kind} grid, so the optimum may lie beyond it; widen the "
                               f"grid of {s.kind} (or let sweeps.refine extend it)")
    if not math.isfinite(i.estimate):
        return "cannot tell", "fewer than two points of the axis have an optimum"
    if not i.known:
        return "cannot tell", (f"one seed gives no interval; sweep two or more seeds "
                               f"(sweeps.seeds) to judge the shift against ±{tolerance:g}")
    if i.low >= -tolerance and i.high <= tolerance:  # type: ignore[operator]
        return "holds", f"its 95% interval lies inside ±{tolerance:g} (sweeps.tolerance)"
    if i.low > tolerance or i.high < -tolerance:  # type: ignore[operator]
        return "fails", f"its 95% interval lies outside ±{tolerance:g} (sweeps.tolerance)"
    need = ("more seeds" if i.limited_by() == "seeds" else
            "grid points closer to the optimum (sweeps.refine)")
    return "cannot tell", (f"its 95% interval straddles ±{tolerance:g} (sweeps.tolerance); "
                           f"{need}, or a wider range than {span}, would narrow it")


def compare_shifts(points: pl.DataFrame, kind: str, axis: str, table: str,
                   control: str) -> Optional[dict[str, Any]]:
    """Whether ``table`` keeps the optimum stiller than ``control`` along ``axis``: the
    difference |shift(table)| - |shift(control)| with its interval over the seeds both share
    (paired: leaving one seed out of both); negative is stiller. None when either has fewer
    than two axis points."""
    curves = seed_curves(points, kind)
    values = sorted({k[2] for k in curves if k[1] == axis and k[0] in (table, control)})
    mine = {v: curves.get((table, axis, v)) for v in values}
    theirs = {v: curves.get((control, axis, v)) for v in values}
    if len(values) < 2 or any(c is None for c in [*mine.values(), *theirs.values()]):
        return None
    a = _shift_of(mine, values)  # type: ignore[arg-type]
    b = _shift_of(theirs, values)  # type: ignore[arg-type]
    if a is None or b is None:
        return None
    seeds = sorted(set().union(*(set(c.seeds) for c in [*mine.values(), *theirs.values()]
                                 if c is not None)))

    def one(cs: dict[Any, Optional[SeedCurve]], keep: np.ndarray) -> float:
        kept = [seeds[i] for i in np.flatnonzero(keep)]
        sub = {v: _subset(c, kept) for v, c in cs.items() if c is not None}
        s = _shift_of(sub, values)
        return s.estimate if s is not None else math.nan

    def diff(keep: np.ndarray) -> float:
        return abs(one(mine, keep)) - abs(one(theirs, keep))

    d = jackknife(len(seeds), diff, math.hypot(a.resolution, b.resolution))
    if d.below(0):
        word = f"{table} keeps it stiller"
    elif d.above(0):
        word = f"{control} keeps it stiller"
    else:
        word = "cannot tell"
    return {"table": table, "control": control, "axis": axis, "kind": kind,
            "difference": d.estimate, "ci_low": d.low, "ci_high": d.high, "verdict": word,
            "shift": a.estimate, "control_shift": b.estimate, "seeds": len(seeds)}


def _subset(curve: SeedCurve, seeds: Sequence[int]) -> SeedCurve:
    keep = [i for i, s in enumerate(curve.seeds) if s in set(seeds)]
    return SeedCurve(curve.x, curve.losses[keep], [curve.seeds[i] for i in keep])


def transfer_suboptimality(points: pl.DataFrame, selected: Mapping[str, float],
                           kind: str = "lr") -> pl.DataFrame:
    """Per (parameterisation, axis, axis_value): the loss at the transferred HP (the base
    model's optimum ``selected[parameterisation]``, which the parameterisation carries to this
    point) minus the loss at this point's own optimum, with its 95% interval over seeds: the
    price of tuning at the base and transferring instead of tuning here. Both losses come
    from the same local fit of the seed-mean curve (`cp.estimate`); an interval that contains
    0 means the price is below what the seeds and the grid resolve (``resolved`` false)."""
    import polars as pl

    opt = {(r["parameterisation"], r["axis"], r["axis_value"]): r
           for r in optima(points, kind).to_dicts()}
    rows = []
    for key, curve in seed_curves(points, kind).items():
        v = selected.get(key[0])
        r = opt[key]
        if v is None or r["opt"] is None:
            continue
        fit = curve.optimum()
        assert fit is not None
        at = math.log2(v)
        idx = curve.finite_points()

        def price(keep: np.ndarray, c: SeedCurve = curve, f: Any = fit,
                  i: np.ndarray = idx, at: float = at) -> float:
            y = c.mean(keep)[i]
            here = value_at(c.x[i], y, f.window, at)
            own = fit_minimum(c.x[i], y, f.window)[1]
            return math.nan if here is None else here - own

        d = jackknife(len(curve.seeds), price)
        loss_t = curve.loss_at(at)
        rows.append({**{k: r[k] for k in r if k not in ("kind",)}, "transferred": v,
                     "loss_transferred": loss_t,
                     "suboptimality": None if not math.isfinite(d.estimate) else d.estimate,
                     "sub_low": d.low, "sub_high": d.high,
                     "resolved": d.above(0) if d.known else None})
    return pl.DataFrame(rows, infer_schema_length=None)


def speedup_ci(baseline: Mapping[int, Curve], candidate: Mapping[int, Curve],
               level: float = 0.95) -> dict:
    """Speedup of ``candidate`` over ``baseline`` (curves by seed) with a confidence interval.

    Each seed pair (the same seed in both arms) gives a speedup; ``speedup`` is their
    geometric mean, the centre of a Student-t interval on their logarithms (ratios compose by
    multiplying), exponentiated. The headline is this estimator, so it always sits inside its
    interval. ``resolved`` says whether the interval excludes 1. ``mean_curve_speedup`` is the
    speedup of the seed-mean curves (what the figure shows), for reference only.
    """
    seeds = sorted(set(baseline) & set(candidate))
    per_seed = {s: speedup(baseline[s], candidate[s]) for s in seeds}
    logs = [math.log(v) for v in per_seed.values() if math.isfinite(v) and v > 0]
    try:
        on_means = speedup(mean_curve([baseline[s] for s in seeds]),
                           mean_curve([candidate[s] for s in seeds])) if seeds else math.nan
    except ValueError:  # seeds evaluated at different steps: no mean curve
        on_means = math.nan
    centre = math.exp(float(np.mean(logs))) if logs else math.nan
    out = {"speedup": centre, "geo_mean": centre, "per_seed": per_seed, "n": len(logs),
           "level": level, "ci_low": None, "ci_high": None, "resolved": None,
           "mean_curve_speedup": on_means}
    if len(logs) >= 2:
        m, se = float(np.mean(logs)), float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
        t = t_quantile(len(logs) - 1, level)
        low, high = math.exp(m - t * se), math.exp(m + t * se)
        out.update(ci_low=low, ci_high=high, resolved=low > 1 or high < 1)
    return out


__all__ = ["SHIFT_TOLERANCE", "Interval", "Shift", "compare_shifts", "interval", "optima",
           "optimum_shift", "seed_curves", "select_optimum", "speedup", "speedup_ci",
           "steps_to_reach", "sweep_points", "transfer_suboptimality", "verdict"]
