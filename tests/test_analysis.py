"""Metrics on curves with a known answer."""

import math

import numpy as np
import polars as pl
import pytest

from cp.analysis import (
    SHIFT_TOLERANCE,
    compare_shifts,
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


def test_select_argmin_and_fit():
    f = parabola(0.006)
    points = [{"lr": v, "seed": 0, "loss": f(v)} for v in (0.002, 0.004, 0.008, 0.016)]
    points.append({"lr": 0.032, "seed": 0, "loss": math.inf})
    assert select_optimum(points, ["lr"], "argmin")["values"]["lr"] == 0.008
    fit = select_optimum(points, ["lr"], "fit")
    assert fit["values"]["lr"] == pytest.approx(0.006, rel=1e-3) and fit["fitted"]["lr"]


def test_select_fit_in_two_dimensions_refines_each_kind_along_its_line():
    points = [{"lr": lr, "weight_decay": wd, "seed": 0,
               "loss": parabola(0.006)(lr) + parabola(0.05, 0.02)(wd) - 2.0}
              for lr in (0.002, 0.004, 0.008, 0.016) for wd in (0.0125, 0.025, 0.05, 0.1, 0.2)]
    sel = select_optimum(points, ["lr", "weight_decay"], "fit")
    assert sel["values"]["lr"] == pytest.approx(0.006, rel=1e-3)
    assert sel["values"]["weight_decay"] == pytest.approx(0.05, rel=1e-3)


def test_select_averages_seeds_and_gives_the_optimums_interval():
    rng = np.random.default_rng(0)
    f = parabola(0.006)
    points = [{"lr": v, "seed": s, "loss": f(v) + rng.normal(0, 0.002)}
              for v in LR_GRID[4:17] for s in range(4)]
    sel = select_optimum(points, ["lr"], "fit")
    low, high = sel["intervals"]["lr"]["low"], sel["intervals"]["lr"]["high"]
    assert low < 0.006 < high and sel["intervals"]["lr"]["seeds"] == 4


def test_select_refuses_when_everything_diverged():
    with pytest.raises(ValueError, match="diverged"):
        select_optimum([{"lr": 1.0, "seed": 0, "loss": math.inf}], ["lr"])


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


def synthetic_sweep(shifts, widths=(64, 128, 256), base_width=32, grid=LR_GRID, seeds=(0,),
                    noise=0.0, rng_seed=0):
    """A sweep table like the sweep stage writes: for each parameterisation, the base model's
    grid (axis "base") and the grid at each width, with loss a parabola in log2(lr) whose
    optimum moves ``shifts[table]`` octaves per doubling of width; each seed adds independent
    noise of std ``noise`` to every point."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for table, s in shifts.items():
        for axis, value in [("base", None)] + [("width", w) for w in widths]:
            width = base_width if value is None else value
            opt = BASE_LR * (width / base_width) ** s
            for lr in grid:
                for seed in seeds:
                    rows.append({"parameterisation": table, "axis": axis, "axis_value": value,
                                 "lr": lr, "seed": seed, "width": width, "depth": 2,
                                 "batch": 8, "tokens": 1000, "seq_len": 32,
                                 "loss": parabola(opt, CURVATURE)(lr) + rng.normal(0, noise),
                                 "run_id": f"{table}{width}{lr}{seed}"})
    return pl.DataFrame(rows)


SHIFTS = {"flat": 0.0, "small": -0.4, "sp_like": -1.0, "up": 0.75}


def test_optimum_shift_of_synthetic_parabolas_is_recovered_and_judged():
    # Three noise-free seeds: the intervals are the grid's resolution alone.
    points = sweep_points(synthetic_sweep(SHIFTS, seeds=(0, 1, 2)), {"width": 32})
    opt = optima(points)
    for r in opt.to_dicts():
        true = BASE_LR * (r["axis_value"] / 32) ** SHIFTS[r["parameterisation"]]
        assert r["fitted"] and r["opt"] == pytest.approx(true, rel=1e-3)
        assert r["opt_low"] < true < r["opt_high"]
    shift = {r["parameterisation"]: r for r in optimum_shift(points).to_dicts()}
    for table, s in SHIFTS.items():
        assert shift[table]["shift_per_doubling"] == pytest.approx(s, abs=1e-3)
        assert shift[table]["ci_low"] < s < shift[table]["ci_high"]
        assert shift[table]["points"] == 4  # the base model is the axis's first point
        assert shift[table]["verdict"] == ("holds" if abs(s) <= SHIFT_TOLERANCE else "fails")


def test_one_seed_or_a_noisy_shift_near_the_tolerance_cannot_be_told():
    one = {r["parameterisation"]: r for r in optimum_shift(
        sweep_points(synthetic_sweep({"flat": 0.0}), {"width": 32})).to_dicts()}
    assert one["flat"]["verdict"] == "cannot tell" and "one seed" in one["flat"]["why"]
    noisy = sweep_points(synthetic_sweep({"edge": -0.25}, seeds=(0, 1, 2), noise=0.02),
                         {"width": 32})
    (r,) = optimum_shift(noisy).to_dicts()
    assert r["ci_low"] < -0.25 < r["ci_high"] and r["verdict"] == "cannot tell"
    assert "more seeds" in r["why"] or "sweeps.refine" in r["why"]


def test_a_paired_comparison_detects_a_known_difference_and_not_identical_tables():
    data = synthetic_sweep({"still": 0.0, "moving": -0.6}, seeds=(0, 1, 2), noise=0.003)
    twin = data.filter(pl.col("parameterisation") == "still").with_columns(
        pl.lit("twin").alias("parameterisation"))
    points = sweep_points(pl.concat([data, twin]), {"width": 32})
    found = compare_shifts(points, "lr", "width", "still", "moving")
    assert found["verdict"] == "still keeps it stiller" and found["ci_high"] < 0
    assert found["difference"] == pytest.approx(-0.6, abs=0.1)
    same = compare_shifts(points, "lr", "width", "still", "twin")
    assert same["verdict"] == "cannot tell" and same["difference"] == 0.0


def test_an_optimum_beyond_the_grid_makes_the_shift_inconclusive():
    narrow = [BASE_LR * 2.0 ** (k / 2) for k in range(-2, 3)]  # +-1 octave
    # The optimum moves half an octave down per doubling: inside the grid at width 64, at its
    # first value at 128, beyond it at 256.
    points = sweep_points(synthetic_sweep({"p": -0.5}, grid=narrow), {"width": 32})
    opt = {r["axis_value"]: r for r in optima(points).to_dicts()}
    assert not opt[64]["at_edge"] and opt[64]["fitted"]
    assert opt[128]["at_edge"] and opt[128]["opt"] == pytest.approx(min(narrow))
    assert opt[256]["at_edge"] and not opt[256]["fitted"]
    assert opt[256]["opt"] == pytest.approx(min(narrow)) and opt[256]["opt_low"] is None
    (shift,) = optimum_shift(points).to_dicts()
    assert shift["edges"] == [128, 256]
    assert shift["verdict"] == "cannot tell" and shift["holds"] is None
    assert "edge" in shift["why"]


def test_transfer_suboptimality_of_synthetic_parabolas():
    points = sweep_points(synthetic_sweep(SHIFTS, seeds=(0, 1, 2), noise=0.001), {"width": 32})
    sub = transfer_suboptimality(points, {t: BASE_LR for t in SHIFTS})
    for r in sub.to_dicts():
        octaves_off = SHIFTS[r["parameterisation"]] * math.log2(r["axis_value"] / 32)
        true = CURVATURE * octaves_off ** 2
        assert r["suboptimality"] == pytest.approx(true, abs=0.01)
        assert r["sub_low"] - 0.002 <= true <= r["sub_high"] + 0.002
        if true == 0:  # nothing transferred wrongly: a price the seeds cannot tell from 0
            assert not r["resolved"] and r["sub_low"] <= 0 <= r["sub_high"]
        elif true > 0.01:
            assert r["resolved"]


def test_the_suboptimality_is_never_negative_at_grid_points_of_a_lopsided_landscape():
    # A sharp minimum, steeper above it: both losses come from the same local fit, so the
    # price of any transferred grid value is at least 0 (up to the fit's rounding).
    def lopsided(lr):
        x = math.log2(lr / BASE_LR)
        return 2.0 + 0.1 * abs(x) + (0.1 * x * x if x > 0 else 0.0)

    grid = [BASE_LR * 2.0 ** k for k in range(-3, 4)]
    rows = [{"parameterisation": "p", "axis": axis, "axis_value": value, "lr": lr, "seed": 0,
             "width": 32, "depth": 2, "batch": 8, "tokens": 1000, "seq_len": 32,
             "loss": lopsided(lr), "run_id": f"{axis}{lr}"}
            for axis, value in [("base", None), ("width", 64)] for lr in grid]
    points = sweep_points(pl.DataFrame(rows), {"width": 32})
    for transferred in grid:
        (r,) = transfer_suboptimality(points, {"p": transferred}).filter(
            pl.col("axis_value") == 64).to_dicts()
        assert r["suboptimality"] >= -1e-3


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
    assert out["speedup"] == out["geo_mean"]  # the headline is the interval's centre
    assert out["resolved"]
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
