"""The target stage: with targets.sweep each target is tuned directly on choosing seeds, and
the global arm at its own optimum (global_tuned) is trained on the judging seeds."""

import json

import polars as pl

from cp.pipeline import run_stage
from cp.study import Study
from tests.study_helpers import quiet, smoke_spec


def test_the_target_is_tuned_directly_and_its_tuned_arm_judges_on_the_judging_seeds(tmp_path):
    spec = smoke_spec(sweeps__grid={"lr": [0.003, 0.01, 0.03]}, sweeps__axes={},
                      sweeps__parameterisations=[], search__enabled=False,
                      arms=[{"name": "global"}], targets__seeds=[1, 2],
                      targets__sweep={"lr": [0.003, 0.01, 0.03]}, targets__sweep_seeds=[0],
                      tracking={"enabled": False})
    study = Study(tmp_path / "s")
    for stage in ("sweep", "select", "search", "transfer", "target", "report"):
        run_stage(stage, spec, study, echo=quiet)
    tuned = json.loads(study.target_tuned.read_text())["target"]
    assert 0.003 <= tuned["values"]["lr"] <= 0.03
    table = pl.read_parquet(study.target_table)
    assert sorted(table.filter(pl.col("arm") == "sweep")["seed"].unique()) == [0]
    judged = table.filter(pl.col("arm").is_in(["global", "global_tuned"]))
    assert sorted(judged["seed"].unique()) == [1, 2]
    for rid in judged["run_id"]:
        config = json.loads(study.run(rid).config.read_text())["config"]
        assert config["stream"] == "judge"
    for rid in table.filter(pl.col("arm") == "sweep")["run_id"]:
        assert json.loads(study.run(rid).config.read_text())["config"]["stream"] == "choose"
    summary = json.loads(study.report_summary.read_text())
    assert "target_optimum.target.lr" in summary["metrics"]
    assert any(c["claim"] == "target_tuned" for c in summary["claims"])
    assert "speedup.target.global_tuned" in summary["metrics"]
