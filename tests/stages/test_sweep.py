"""The sweep stage: its plan covers the grid for each table and axis, identical runs share an
id, extra blocks sweep their own tables; a diverged point is a recorded result."""

import json
import math

import pytest

from cp.pipeline import run_stage
from cp.stages.sweep import sweep_runs
from cp.study import Study
from tests.study_helpers import quiet, smoke_spec


def test_sweep_covers_the_grid_for_each_table_and_each_axis_value():
    spec = smoke_spec()
    runs = sweep_runs(spec)
    n_lr = len(spec.sweeps.grid["lr"])
    tables = 1 + len(spec.sweeps.parameterisations)
    n_axis = sum(len(v) for v in spec.sweeps.axes.values())
    assert len(runs) == tables * n_lr * (1 + n_axis) * len(spec.sweeps.seeds)
    for r in runs:
        assert r.config.hps.lr == r.tags["lr"]
        if r.tags["axis"] == "width":
            assert r.config.scale.width == r.tags["axis_value"]


def test_identical_runs_resolve_to_one_id():
    spec = smoke_spec()
    runs = sweep_runs(spec)
    # At the base scale every table gives the base HPs: SP and Complete(d)P share those runs,
    # and the width axis at the base width repeats the base grid.
    assert len({r.run_id for r in runs}) == len(spec.sweeps.grid["lr"]) * 3


def test_extra_blocks_sweep_their_own_tables_axes_and_grid():
    spec = smoke_spec(tables={"cdp_h03": {"rules": {"all": {"lr": {"tokens": -0.3}}}}},
                      sweeps__extra=[{"name": "horizon",
                                      "parameterisations": ["completed_p", "cdp_h03"],
                                      "axes": {"tokens": [16_384, 65_536]},
                                      "grid": {"lr": [0.01, 0.03]}}])
    block = [r for r in sweep_runs(spec) if r.tags["block"] == "horizon"]
    assert len(block) == 2 * 2 * 2
    assert {r.config.scale.tokens for r in block} == {16_384, 65_536}
    assert {r.tags["parameterisation"] for r in block} == {"completed_p", "cdp_h03"}
    # At the base horizon both tables give the base HPs: those runs are shared with the main
    # sweep; 4x the horizon gives the two tables different learning rates.
    ids = {r.run_id for r in sweep_runs(spec) if r.tags["block"] == "main"}
    base = [r for r in block if r.config.scale.tokens == 16_384]
    assert all(r.run_id in ids for r in base)
    long = {r.tags["parameterisation"]: r.config.settings()[0].lr for r in block
            if r.config.scale.tokens == 65_536 and r.tags["lr"] == 0.01}
    assert long["cdp_h03"] / long["completed_p"] == pytest.approx(4 ** 0.2)


def test_a_group_scoped_grid_key_sets_only_that_groups_base_value():
    spec = smoke_spec(arch__qk_norm=True, sweeps__extra=[
        {"name": "qk", "parameterisations": ["completed_p"], "axes": {"width": [64]},
         "grid": {"qk_norms.eps": [1e-4, 1e-3]}}])
    block = [r for r in sweep_runs(spec) if r.tags["block"] == "qk"]
    assert sorted(r.tags["qk_norms.eps"] for r in block) == [1e-4, 1e-3]
    for r in block:
        eps = {s.group: s.eps for s in r.config.settings() if s.layer in (None, 0)}
        # The QK gains' eps is width-independent under Complete(d)P: the grid value itself.
        assert eps["qk_norm_q"] == eps["qk_norm_k"] == pytest.approx(r.tags["qk_norms.eps"])
        assert eps["attn_q"] == pytest.approx(spec.hps.eps / 2)  # x m_N^-1, untouched
        assert r.config.hps.get("qk_norms.eps") == r.tags["qk_norms.eps"]


def test_a_diverged_sweep_point_is_recorded_and_the_optimum_ignores_it(tmp_path):
    spec = smoke_spec(sweeps__grid={"lr": [0.003, 0.01, 1000.0]}, sweeps__axes={},
                      sweeps__parameterisations=[])
    study = Study(tmp_path / "s")
    rows = run_stage("sweep", spec, study, echo=quiet)
    by_lr = {r["lr"]: r for r in rows}
    assert by_lr[1000.0]["diverged"] and by_lr[1000.0]["loss"] == math.inf
    assert by_lr[0.01]["status"] == "completed"
    selected = run_stage("select", spec, study, echo=quiet)
    assert 0.003 <= selected["completed_p"]["values"]["lr"] <= 0.03


def test_refinement_adds_points_beside_each_optimum_and_resumes_without_retraining(tmp_path):
    spec = smoke_spec(sweeps__grid={"lr": [0.0025, 0.01, 0.04]}, sweeps__seeds=[0, 5],
                      sweeps__parameterisations=[], sweeps__refine={"rounds": 1, "width": 0.1,
                                                                    "min_spacing": 0.25},
                      tracking={"enabled": False})
    study = Study(tmp_path / "s")
    rows = run_stage("sweep", spec, study, echo=quiet)
    added = [r for r in rows if r.get("round") == 1]
    assert added, "no refinement run"
    grid = spec.sweeps.grid["lr"]
    for r in added:  # midpoints (in log2) beside the curve's lowest point, or one grid step out
        assert r["lr"] not in grid
        octaves = sorted(abs(math.log2(r["lr"] / v)) for v in grid)
        assert octaves[0] == pytest.approx(1.0) or octaves[0] == pytest.approx(2.0)
    assert {r["seed"] for r in added} == {0, 5}
    again = run_stage("sweep", spec, study, echo=quiet)
    assert len(again) == len(rows)
    for run_dir in study.runs_dir.iterdir():           # nothing trained twice
        assert study.run(run_dir.name).events.read_text().count('"finish"') == 1


def test_a_study_with_two_seeds_reports_intervals_beside_its_numbers(tmp_path):
    spec = smoke_spec(sweeps__seeds=[0, 5], search__enabled=False,
                      arms=[{"name": "global"}], tracking={"enabled": False})
    study = Study(tmp_path / "s")
    for stage in ("sweep", "select", "report"):
        run_stage(stage, spec, study, echo=quiet)
    metrics = json.loads(study.report_summary.read_text())["metrics"]
    shifts = [k for k in metrics if k.startswith("shift.") and not k.endswith(("_low",
                                                                                "_high"))]
    assert shifts
    for k in shifts:
        if not any(k2.startswith(f"{k}.ci") for k2 in metrics):
            continue  # an optimum at the grid's edge: no interval, and the report says so
        assert metrics[f"{k}.ci_low"] <= metrics[k] <= metrics[f"{k}.ci_high"]
    claims = json.loads(study.report_summary.read_text())["claims"]
    transfer = [c for c in claims if c["claim"] == "transfer"]
    assert transfer and all(c["verdict"] in ("holds", "fails", "cannot tell") for c in transfer)
