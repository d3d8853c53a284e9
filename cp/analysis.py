"""Numbers from a study's tables: the global optimum, optimum fits, speedups. Plain data and
polars frames in, numbers and frames out; which files hold the tables is the stages' business.

Losses of diverged or failed runs count as +inf: they lose every comparison and never enter a
fit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    import polars as pl

Curve = Sequence[tuple[float, float]]  # (step, loss)


def fit_log2_optimum(values: Sequence[float], losses: Sequence[float],
                     neighbours: int = 2) -> Optional[tuple[float, float]]:
    """Minimum of a parabola fitted to loss against log2(value) around the argmin.

    Uses the argmin and up to ``neighbours`` finite points on each side. Returns (value, loss)
    at the vertex, or None when there are fewer than 3 points, the parabola opens downwards,
    or its vertex falls outside the points used (the optimum is at the grid's edge).
    """
    pts = sorted((math.log2(v), loss) for v, loss in zip(values, losses, strict=True)
                 if math.isfinite(loss))
    if len(pts) < 3:
        return None
    i = min(range(len(pts)), key=lambda k: pts[k][1])
    lo, hi = max(0, i - neighbours), min(len(pts), i + neighbours + 1)
    window = pts[lo:hi]
    if len(window) < 3:
        return None
    xs, ys = np.array([p[0] for p in window]), np.array([p[1] for p in window])
    a, b, c = np.polyfit(xs, ys, 2)
    if a <= 0:
        return None
    x_opt = -b / (2 * a)
    if not xs.min() <= x_opt <= xs.max():
        return None
    return float(2.0 ** x_opt), float(c - b * b / (4 * a))


def select_optimum(points: Sequence[dict], kinds: Sequence[str], method: str = "fit") -> dict:
    """The global optimum over grid ``points`` ({kind: value, ..., "loss": seed-mean loss}).

    ``argmin``: the best grid point. ``fit``: the best grid point with each kind refined by
    `fit_log2_optimum` along the grid line through it (other kinds held at the argmin).
    """
    finite = [p for p in points if math.isfinite(p["loss"])]
    if not finite:
        raise ValueError("every sweep point diverged or failed: no optimum to select")
    best = min(finite, key=lambda p: p["loss"])
    values = {k: float(best[k]) for k in kinds}
    fitted: dict[str, bool] = {}
    if method == "fit":
        for kind in kinds:
            line = [p for p in points if all(p[k] == best[k] for k in kinds if k != kind)]
            fit = fit_log2_optimum([p[kind] for p in line], [p["loss"] for p in line])
            fitted[kind] = fit is not None
            if fit is not None:
                values[kind] = fit[0]
    return {"values": values, "argmin": {k: float(best[k]) for k in kinds},
            "loss": float(best["loss"]), "method": method, "fitted": fitted}


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

SHIFT_TOLERANCE = 0.5
"""Octaves (log2 units) the optimum of an HP may move per doubling of an axis for transfer to
count as holding. Half an octave is a factor 1.41 in lr, the spacing of a fine lr grid."""

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
    seed diverged or failed (a point that diverges on some seeds is not an optimum)."""
    import polars as pl

    return (points.group_by(["parameterisation", "axis", "axis_value", kind], maintain_order=True)
            .agg(pl.when(pl.col("loss").is_infinite().any()).then(float("inf"))
                 .otherwise(pl.col("loss").mean()).alias("loss"),
                 pl.len().alias("seeds"),
                 *(pl.col(c).first() for c in ("width", "depth", "batch", "tokens", "seq_len")
                   if c in points.columns)))


def optima(points: pl.DataFrame, kind: str = "lr") -> pl.DataFrame:
    """Per (parameterisation, axis, axis_value): the optimal ``kind`` from a quadratic fit of
    the seed-mean loss against log2(value) around the argmin (`fit_log2_optimum`); where no
    fit is possible the grid argmin stands in (``fitted`` false; ``at_edge`` when the argmin
    is the grid's first or last value, so the optimum may lie outside the grid)."""
    import polars as pl

    means = seed_means(points, kind)
    rows = []
    keys = ["parameterisation", "axis", "axis_value"]
    for key, g in means.sort([*keys, kind]).group_by(keys, maintain_order=True):
        vals, losses = g[kind].to_list(), g["loss"].to_list()
        finite = [(v, loss) for v, loss in zip(vals, losses, strict=True)
                  if math.isfinite(loss)]
        row: dict[str, Any] = {
            **dict(zip(keys, key, strict=True)), "kind": kind, "points": len(finite),
            **{c: g[c][0] for c in ("width", "depth", "batch", "tokens", "seq_len")
               if c in g.columns}}
        if not finite:
            rows.append({**row, "opt": None, "log2_opt": None, "opt_loss": None,
                         "argmin": None, "fitted": False, "at_edge": False})
            continue
        arg, arg_loss = min(finite, key=lambda p: p[1])
        fit = fit_log2_optimum(vals, losses)
        opt, opt_loss = fit if fit else (arg, arg_loss)
        rows.append({**row, "opt": opt, "log2_opt": math.log2(opt), "opt_loss": opt_loss,
                     "argmin": arg, "fitted": fit is not None,
                     "at_edge": arg in (min(vals), max(vals))})
    return pl.DataFrame(rows, infer_schema_length=None)


def optimum_shift(opt: pl.DataFrame, tolerance: float = SHIFT_TOLERANCE) -> pl.DataFrame:
    """Per (parameterisation, axis): how far the optimum moves per doubling of the axis, the
    slope of log2(optimum) against log2(axis value) (least squares over the axis's points).

    ``holds``: the shift is within ``tolerance`` octaves per doubling; null (inconclusive)
    when fewer than two points have an optimum, or when the lowest loss of a point sits at the
    grid's first or last value (``edges`` lists those axis values): the loss still falls at the
    edge, so the optimum may lie beyond the grid, whatever a parabola through it says."""
    import polars as pl

    rows = []
    keys = ["parameterisation", "axis"]
    for key, g in opt.sort([*keys, "axis_value"]).group_by(keys, maintain_order=True):
        ok = g.filter(pl.col("log2_opt").is_not_null())
        xs = np.log2(ok["axis_value"].to_numpy().astype(float))
        ys = ok["log2_opt"].to_numpy()
        edges = g.filter(pl.col("at_edge"))["axis_value"].to_list()
        edge = bool(edges) or ok.height < g.height
        slope = float(np.polyfit(xs, ys, 1)[0]) if len(set(xs)) >= 2 else None
        holds = None if slope is None or edge else abs(slope) <= tolerance
        rows.append({**dict(zip(keys, key, strict=True)), "kind": g["kind"][0],
                     "shift_per_doubling": slope, "points": ok.height,
                     "from_value": g["axis_value"].min(), "to_value": g["axis_value"].max(),
                     "opt_from": ok["opt"][0] if ok.height else None,
                     "opt_to": ok["opt"][-1] if ok.height else None,
                     "edges": edges, "inconclusive": edge, "holds": holds})
    return pl.DataFrame(rows, infer_schema_length=None)


def loss_at(values: Sequence[float], losses: Sequence[float], value: float) -> Optional[float]:
    """The loss at ``value`` from the grid: a parabola in log2(value) through the three finite
    points nearest it (a line through two when there are only two); None outside the grid."""
    pts = sorted((math.log2(v), loss) for v, loss in zip(values, losses, strict=True)
                 if math.isfinite(loss))
    x = math.log2(value)
    if len(pts) < 2 or not pts[0][0] - 1e-9 <= x <= pts[-1][0] + 1e-9:
        return None
    near = sorted(sorted(pts, key=lambda p: abs(p[0] - x))[:3])
    coef = np.polyfit([p[0] for p in near], [p[1] for p in near], len(near) - 1)
    return float(np.polyval(coef, x))


def best_loss(values: Sequence[float], losses: Sequence[float]) -> Optional[float]:
    """The lowest value of the `loss_at` interpolant of the grid (what the best value at this
    point gives, as well as the grid can tell); None with fewer than two finite points. The
    interpolant is piecewise a parabola through three neighbours, so its minimum is at a grid
    value or at the vertex of one of those parabolas."""
    pts = sorted((math.log2(v), loss) for v, loss in zip(values, losses, strict=True)
                 if math.isfinite(loss))
    if len(pts) < 2:
        return None
    xs = [x for x, _ in pts]
    for i in range(len(pts) - 2):
        a, b, _ = np.polyfit(xs[i:i + 3], [y for _, y in pts[i:i + 3]], 2)
        if a > 0 and xs[0] <= -b / (2 * a) <= xs[-1]:
            xs.append(-b / (2 * a))
    lows = [loss_at(values, losses, 2.0 ** x) for x in xs]
    return min(v for v in lows if v is not None)  # every x lies within the grid: none is None


def transfer_suboptimality(points: pl.DataFrame, selected: dict[str, float],
                           kind: str = "lr") -> pl.DataFrame:
    """Per (parameterisation, axis, axis_value): the loss at the transferred HP (the base
    model's optimum ``selected[parameterisation]``, which the parameterisation carries to this
    point) minus the loss at this point's own optimum. The price of tuning
    at the base and transferring instead of tuning here.

    Both losses are read off the same interpolant of the grid (`loss_at`; the optimum's is its
    lowest value, `best_loss`), so the difference is never negative; the vertex of the wider
    fit that places the optimum can sit above the measured losses where the landscape is
    lopsided, and is not used for the loss."""
    import polars as pl

    opt = optima(points, kind)
    means = seed_means(points, kind)
    rows = []
    for r in opt.to_dicts():
        v = selected.get(r["parameterisation"])
        if v is None or r["opt_loss"] is None:
            continue
        g = means.filter((pl.col("parameterisation") == r["parameterisation"])
                         & (pl.col("axis") == r["axis"])
                         & (pl.col("axis_value") == r["axis_value"]))
        values, losses = g[kind].to_list(), g["loss"].to_list()
        at, own = loss_at(values, losses, v), best_loss(values, losses)
        own = r["opt_loss"] if own is None else own
        rows.append({**{k: r[k] for k in r if k not in ("kind", "opt_loss")}, "opt_loss": own,
                     "transferred": v, "loss_transferred": at,
                     "suboptimality": None if at is None else max(0.0, at - own)})
    return pl.DataFrame(rows, infer_schema_length=None)


def speedup_ci(baseline: Mapping[int, Curve], candidate: Mapping[int, Curve],
               level: float = 0.95) -> dict:
    """Speedup of ``candidate`` over ``baseline`` (curves by seed) with a confidence interval.

    ``speedup``: of the seed-mean curves (linear interpolation between evaluations). The
    interval is over seeds: the speedup of each seed pair (the same seed in both arms), a
    Student-t interval on their logarithms (ratios compose by multiplying), exponentiated; its
    centre ``geo_mean`` is their geometric mean. Needs two or more seed pairs.
    """
    seeds = sorted(set(baseline) & set(candidate))
    per_seed = {s: speedup(baseline[s], candidate[s]) for s in seeds}
    logs = [math.log(v) for v in per_seed.values() if math.isfinite(v) and v > 0]
    try:
        point = speedup(mean_curve([baseline[s] for s in seeds]),
                        mean_curve([candidate[s] for s in seeds])) if seeds else math.nan
    except ValueError:  # seeds evaluated at different steps: no mean curve
        point = math.nan
    out = {"speedup": point, "per_seed": per_seed, "n": len(logs), "level": level,
           "geo_mean": math.exp(float(np.mean(logs))) if logs else math.nan,
           "ci_low": None, "ci_high": None}
    if len(logs) >= 2:
        from scipy import stats

        m, se = float(np.mean(logs)), float(np.std(logs, ddof=1)) / math.sqrt(len(logs))
        t = float(stats.t.ppf(0.5 + level / 2, len(logs) - 1))
        out["ci_low"], out["ci_high"] = math.exp(m - t * se), math.exp(m + t * se)
    return out
