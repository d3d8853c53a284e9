"""Metrics on curves with a known answer."""

import math

import pytest

from cp.analysis import fit_log2_optimum, mean_curve, select_optimum, speedup, steps_to_reach


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
