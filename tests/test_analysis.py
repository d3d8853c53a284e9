"""Metrics on curves with a known answer."""

import math

import polars as pl
import pytest

from cp.analysis import (
    SHIFT_TOLERANCE,
    fit_log2_optimum,
    loss_at,
    mean_curve,
    optima,
    optimum_shift,
    select_optimum,
    speedup,
    speedup_ci,
    steps_to_reach,
    sweep_points,
    transfer_suboptimality,
)


def parabola(x_opt, curvature=0.1, floor=2.0):
    return lambda v: floor + curvature * (math.log2(v) - math.log2(x_opt)) ** 2


def test_fit_recovers_an_off_grid_optimum():
    f = parabola(0.006)
    grid = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]
    opt, loss = fit_log2_optimum(grid, [f(v) for v in grid])
    assert opt == pytest.approx(0.006, rel=1e-6) and loss == pytest.approx(2.0)


def test_fit_declines_an_optimum_at_the_grid_edge_or_with_diverged_points():
    f = parabola(0.1)
    grid = [0.001, 0.002, 0.004]
    assert fit_log2_optimum(grid, [f(v) for v in grid]) is None
    assert fit_log2_optimum([0.001, 0.002, 0.004], [2.0, math.inf, math.inf]) is None


def test_select_argmin_and_fit():
    f = parabola(0.006)
    points = [{"lr": v, "loss": f(v)} for v in (0.002, 0.004, 0.008, 0.016)]
    points.append({"lr": 0.032, "loss": math.inf})
    assert select_optimum(points, ["lr"], "argmin")["values"]["lr"] == 0.008
    fit = select_optimum(points, ["lr"], "fit")
    assert fit["values"]["lr"] == pytest.approx(0.006, rel=1e-6) and fit["fitted"]["lr"]


def test_select_fit_in_two_dimensions_refines_each_kind_along_its_line():
    points = [{"lr": lr, "weight_decay": wd,
               "loss": parabola(0.006)(lr) + parabola(0.05, 0.02)(wd) - 2.0}
              for lr in (0.002, 0.004, 0.008, 0.016) for wd in (0.0125, 0.025, 0.05, 0.1, 0.2)]
    sel = select_optimum(points, ["lr", "weight_decay"], "fit")
    assert sel["values"]["lr"] == pytest.approx(0.006, rel=1e-6)
    assert sel["values"]["weight_decay"] == pytest.approx(0.05, rel=1e-6)


def test_select_refuses_when_everything_diverged():
    with pytest.raises(ValueError, match="diverged"):
        select_optimum([{"lr": 1.0, "loss": math.inf}], ["lr"])


def loss_curve(speed=1.0, steps=100, every=5):
    """A power-law loss curve; `speed` x faster means it is at step s where the reference is at
    step speed * s."""
    return [(s, 2.0 + 3.0 * (speed * s) ** -0.5) for s in range(every, steps + 1, every)]


@pytest.mark.parametrize("factor", [1.0, 1.25, 1.6, 2.0])
def test_speedup_of_a_curve_sped_up_by_a_known_factor(factor):
    assert speedup(loss_curve(), loss_curve(speed=factor)) == pytest.approx(factor, rel=0.02)


def test_a_slower_candidate_gives_a_speedup_below_one():
    assert speedup(loss_curve(), loss_curve(speed=0.5)) == pytest.approx(0.5, rel=0.02)


def test_steps_to_reach_interpolates_between_evaluations():
    curve = [(10, 3.0), (20, 2.0), (30, 1.5)]
    assert steps_to_reach(curve, 2.5) == pytest.approx(15)
    assert steps_to_reach(curve, 1.0) is None


def test_mean_curve_averages_seeds_pointwise():
    a, b = [(1, 2.0), (2, 1.0)], [(1, 4.0), (2, 3.0)]
    assert mean_curve([a, b]) == [(1, 3.0), (2, 2.0)]
    with pytest.raises(ValueError):
        mean_curve([a, [(1, 2.0), (3, 1.0)]])


# ---------------------------------------------------------------------------------------------
# Optimum shift, transfer suboptimality and speedup intervals on data with a known answer.

BASE_LR, CURVATURE = 0.01, 0.1
LR_GRID = [BASE_LR * 2.0 ** (k / 2) for k in range(-10, 11)]  # +-5 octaves, half-octave steps


def synthetic_sweep(shifts, widths=(64, 128, 256), base_width=32, grid=LR_GRID):
    """A sweep table like the sweep stage writes: for each parameterisation, the base model's
    grid (axis "base") and the grid at each width, with loss a parabola in log2(lr) whose
    optimum moves ``shifts[table]`` octaves per doubling of width."""
    rows = []
    for table, s in shifts.items():
        for axis, value in [("base", None)] + [("width", w) for w in widths]:
            width = base_width if value is None else value
            opt = BASE_LR * (width / base_width) ** s
            for lr in grid:
                rows.append({"parameterisation": table, "axis": axis, "axis_value": value,
                             "lr": lr, "seed": 0, "width": width, "depth": 2, "batch": 8,
                             "tokens": 1000, "seq_len": 32,
                             "loss": parabola(opt, CURVATURE)(lr), "run_id": f"{table}{width}{lr}"})
    return pl.DataFrame(rows)


SHIFTS = {"flat": 0.0, "small": -0.4, "sp_like": -1.0, "up": 0.75}


def test_optimum_shift_of_synthetic_parabolas_is_recovered():
    points = sweep_points(synthetic_sweep(SHIFTS), {"width": 32})
    opt = optima(points)
    for r in opt.to_dicts():
        true = BASE_LR * (r["axis_value"] / 32) ** SHIFTS[r["parameterisation"]]
        assert r["fitted"] and r["opt"] == pytest.approx(true, rel=1e-6)
    shift = {r["parameterisation"]: r for r in optimum_shift(opt).to_dicts()}
    for table, s in SHIFTS.items():
        assert shift[table]["shift_per_doubling"] == pytest.approx(s, abs=1e-6)
        assert shift[table]["points"] == 4  # the base model is the axis's first point
        assert shift[table]["holds"] == (abs(s) <= SHIFT_TOLERANCE)


def test_an_optimum_beyond_the_grid_makes_the_shift_inconclusive():
    narrow = [BASE_LR * 2.0 ** (k / 2) for k in range(-2, 3)]  # +-1 octave
    # The optimum moves half an octave down per doubling: inside the grid at width 64, at its
    # first value at 128, beyond it at 256.
    points = sweep_points(synthetic_sweep({"p": -0.5}, grid=narrow), {"width": 32})
    opt = {r["axis_value"]: r for r in optima(points).to_dicts()}
    assert not opt[64]["at_edge"] and opt[64]["fitted"]
    assert opt[128]["at_edge"] and opt[128]["opt"] == pytest.approx(min(narrow))
    assert opt[256]["at_edge"] and not opt[256]["fitted"] and opt[256]["opt"] == min(narrow)
    (shift,) = optimum_shift(optima(points)).to_dicts()
    assert shift["edges"] == [128, 256]
    assert shift["inconclusive"] and shift["holds"] is None  # though -0.5 would hold


def test_transfer_suboptimality_of_synthetic_parabolas():
    points = sweep_points(synthetic_sweep(SHIFTS), {"width": 32})
    sub = transfer_suboptimality(points, {t: BASE_LR for t in SHIFTS})
    for r in sub.to_dicts():
        octaves_off = SHIFTS[r["parameterisation"]] * math.log2(r["axis_value"] / 32)
        assert r["suboptimality"] == pytest.approx(CURVATURE * octaves_off ** 2, abs=1e-9)


def test_the_suboptimality_compares_like_with_like_on_a_lopsided_landscape():
    # A sharp minimum, steeper above it: the 5-point parabola that places the optimum has its
    # vertex above the measured losses. The loss at the point's own optimum and at the
    # transferred value must come from the same interpolant, so the difference is never negative.
    def lopsided(lr):
        x = math.log2(lr / BASE_LR)
        return 2.0 + 0.1 * abs(x) + (0.1 * x * x if x > 0 else 0.0)

    grid = [BASE_LR * 2.0 ** k for k in range(-3, 4)]
    losses = [lopsided(lr) for lr in grid]
    rows = [{"parameterisation": "p", "axis": axis, "axis_value": value, "lr": lr, "seed": 0,
             "width": 32, "depth": 2, "batch": 8, "tokens": 1000, "seq_len": 32,
             "loss": lopsided(lr), "run_id": f"{axis}{lr}"}
            for axis, value in [("base", None), ("width", 64)] for lr in grid]
    points = sweep_points(pl.DataFrame(rows), {"width": 32})
    (fit,) = optima(points).filter(pl.col("axis_value") == 64).to_dicts()
    assert fit["opt_loss"] > min(losses) + 1e-3  # the wide fit overshoots
    for transferred in [*grid, fit["opt"], BASE_LR * 1.3]:
        (r,) = transfer_suboptimality(points, {"p": transferred}).filter(
            pl.col("axis_value") == 64).to_dicts()
        assert r["opt_loss"] <= min(losses) + 1e-12
        assert r["loss_transferred"] - r["opt_loss"] >= -1e-12
        assert r["suboptimality"] == pytest.approx(r["loss_transferred"] - r["opt_loss"])


def test_loss_at_interpolates_the_grid_and_refuses_to_extrapolate():
    f = parabola(0.006)
    grid = [0.001, 0.002, 0.004, 0.008, 0.016]
    losses = [f(v) for v in grid]
    assert loss_at(grid, losses, 0.003) == pytest.approx(f(0.003), abs=1e-12)
    assert loss_at(grid, losses, 0.0005) is None and loss_at(grid, losses, 0.1) is None


@pytest.mark.parametrize("factor", [1.3, 2.0])
def test_speedup_interval_over_seeds_of_curves_sped_up_by_known_factors(factor):
    # Seed pairs sped up by factor * e^-d, factor, factor * e^d: the geometric mean is the
    # factor, and the interval lies symmetrically around it in log space.
    d = 0.1
    base = {s: loss_curve() for s in (0, 1, 2)}
    cand = {s: loss_curve(speed=factor * math.exp(d * (s - 1))) for s in (0, 1, 2)}
    out = speedup_ci(base, cand)
    assert out["n"] == 3
    assert out["geo_mean"] == pytest.approx(factor, rel=0.02)
    assert out["ci_low"] < factor < out["ci_high"]
    assert out["ci_low"] * out["ci_high"] == pytest.approx(out["geo_mean"] ** 2, rel=1e-6)
    assert out["speedup"] == pytest.approx(factor, rel=0.05)
    wider = speedup_ci(base, cand, level=0.99)
    assert wider["ci_low"] < out["ci_low"] and wider["ci_high"] > out["ci_high"]


def test_speedup_interval_needs_two_seed_pairs_and_pairs_seeds_by_number():
    base = {0: loss_curve(), 1: loss_curve()}
    cand = {1: loss_curve(speed=1.5), 7: loss_curve(speed=3.0)}  # only seed 1 is paired
    out = speedup_ci(base, cand)
    assert out["n"] == 1 and out["ci_low"] is None
    assert out["per_seed"][1] == pytest.approx(1.5, rel=0.02) and 7 not in out["per_seed"]


def test_speedup_interpolates_curves_evaluated_at_different_steps():
    coarse = loss_curve(every=10)
    fine = [(s, 2.0 + 3.0 * (1.6 * s) ** -0.5) for s in range(3, 101, 3)]
    assert speedup(coarse, fine) == pytest.approx(1.6, rel=0.02)
