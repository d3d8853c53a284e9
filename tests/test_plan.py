"""Expanding a spec's stages into runs."""

from pathlib import Path

import pytest
import yaml

from cp.plan import arm_run, plan, sweep_runs
from cp.scaling import Multipliers
from cp.spec import ArmSpec, build_spec

SMOKE = yaml.safe_load((Path(__file__).parent.parent / "specs" / "smoke.yaml").read_text())


def test_sweep_covers_the_grid_for_each_table_and_each_axis_value():
    spec = build_spec(SMOKE)
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
    spec = build_spec(SMOKE)
    runs = sweep_runs(spec)
    # At the base scale every table gives the base HPs: SP and Complete(d)P share those runs,
    # and the width axis at the base width repeats the base grid.
    assert len({r.run_id for r in runs}) == len(spec.sweeps.grid["lr"]) * 3


def test_arms_take_the_selected_optimum_and_the_searched_multipliers():
    spec = build_spec(SMOKE)
    selected = {"completed_p": {"values": {"lr": 0.02}}}
    mult = Multipliers(per_type={"lr": {"attn_q": 2.0}})
    g = arm_run(spec, ArmSpec(name="global"), "target", 0, selected, mult)
    pm = arm_run(spec, ArmSpec(name="pm", multipliers="search"), "target", 0, selected, mult)
    assert g.config.hps.lr == pm.config.hps.lr == 0.02
    assert g.config.multipliers == Multipliers() and pm.config.multipliers == mult
    assert g.run_id != pm.run_id
    assert g.config.scale == spec.models["target"].scale()


def test_plan_counts_runs_and_tokens_per_stage():
    spec = build_spec(SMOKE)
    stages = {p.stage: p for p in plan(spec)}
    assert list(stages) == ["check", "sweep", "select", "search", "transfer", "target",
                            "report"]
    assert stages["sweep"].runs == len({r.run_id for r in sweep_runs(spec)})
    assert stages["search"].runs == spec.search.trials + 2 * len(spec.search.reeval_seeds)
    target = spec.models["target"]
    assert stages["target"].tokens == len(spec.arms) * target.tokens


def test_extra_blocks_sweep_their_own_tables_axes_and_grid():
    raw = {**SMOKE, "tables": {"cdp_h03": {"rules": {"all": {"lr": {"horizon": -0.3}}}}},
           "sweeps": {**SMOKE["sweeps"], "extra": [
               {"name": "horizon", "parameterisations": ["completed_p", "cdp_h03"],
                "axes": {"tokens": [16_384, 65_536]}, "grid": {"lr": [0.01, 0.03]}}]}}
    spec = build_spec(raw)
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
    raw = {**SMOKE, "arch": {**SMOKE["arch"], "qk_norm": True},
           "sweeps": {**SMOKE["sweeps"], "extra": [
               {"name": "qk", "parameterisations": ["completed_p"], "axes": {"width": [64]},
                "grid": {"qk_norms.eps": [1e-4, 1e-3]}}]}}
    spec = build_spec(raw)
    block = [r for r in sweep_runs(spec) if r.tags["block"] == "qk"]
    assert sorted(r.tags["qk_norms.eps"] for r in block) == [1e-4, 1e-3]
    for r in block:
        eps = {s.group: s.eps for s in r.config.settings() if s.layer in (None, 0)}
        # The QK gains' eps is width-independent under Complete(d)P: the grid value itself.
        assert eps["qk_norm_q"] == eps["qk_norm_k"] == pytest.approx(r.tags["qk_norms.eps"])
        assert eps["attn_q"] == pytest.approx(spec.hps.eps / 2)  # x m_N^-1, untouched
        assert r.config.hps.get("qk_norms.eps") == r.tags["qk_norms.eps"]
