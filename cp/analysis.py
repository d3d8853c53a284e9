"""Numbers from a study's tables: the global optimum, optimum fits, speedups.

Losses of diverged or failed runs count as +inf: they lose every comparison and never enter a
fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

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


def loss_or_inf(result) -> float:
    """A run's final validation loss, +inf if it did not complete."""
    if result.status != "completed" or not math.isfinite(result.final_val_loss):
        return math.inf
    return float(result.final_val_loss)
