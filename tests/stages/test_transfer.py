"""The transfer stage: each arm takes the selected optimum and the searched factors, and each
(target, arm)'s settings are written for any trainer."""

import json

import polars as pl

from cp.pipeline import run_stage
from cp.scaling import Factors
from cp.stages.transfer import ArmSpec, arm_run
from cp.study import Study
from tests.study_helpers import quiet, smoke_spec


def test_arms_take_the_selected_optimum_and_the_searched_factors():
    spec = smoke_spec()
    selected = {"completed_p": {"values": {"lr": 0.02}}}
    searched = Factors(per_type={"lr": {"attn_q": 2.0}})
    g = arm_run(spec, ArmSpec(name="global"), "target", 0, selected, searched)
    pm = arm_run(spec, ArmSpec(name="pm", factors="search"), "target", 0, selected, searched)
    assert g.config.hps.lr == pm.config.hps.lr == 0.02
    assert g.config.factors == Factors() and pm.config.factors == searched
    assert g.run_id != pm.run_id
    assert g.config.scale == spec.models["target"].scale


def test_transfer_writes_each_target_arms_settings_for_another_trainer(tmp_path):
    spec = smoke_spec(sweeps__grid={"lr": [0.003, 0.01]}, sweeps__axes={},
                      sweeps__parameterisations=[], search__trials=2, search__reeval_seeds=[1])
    study = Study(tmp_path / "s")
    for stage in ("sweep", "select", "search", "transfer"):
        run_stage(stage, spec, study, echo=quiet)
    for arm in ("global", "per_module"):
        settings = json.loads(study.transfer_settings("target", arm).read_text())
        assert settings["scale"]["width"] == spec.models["target"].width
        assert {g["group"] for g in settings["groups"]} >= {"embedding", "attn_q",
                                                            "unembedding"}
    best = json.loads(study.search_best.read_text())
    assert best["trials"] == 2 and best["reeval"]["seeds"] == [1]
    trials = pl.read_parquet(study.search_trials)
    assert len(trials) == 2                     # the budget counts every training run
