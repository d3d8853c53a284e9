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


def test_transferred_runs_execute_as_the_spec_says_now(tmp_path):
    """A target's parallel settings may change after the transfer stage wrote its runs (more
    GPUs, a smaller micro-batch after running out of memory): the runs take the spec's, and
    keep their ids."""
    from cp.config import ParallelConfig
    from cp.scaling import Factors
    from cp.stages.target import transferred_runs
    from cp.stages.transfer import ArmSpec, arm_run
    from cp.study import write_json

    spec, study = smoke_spec(), Study(tmp_path)
    written = arm_run(spec, ArmSpec(name="global"), "target", 1,
                      {"completed_p": {"values": {"lr": 0.02}}}, Factors())
    write_json(study.transfer_runs("target", "global"), [
        {"run_id": written.run_id, "seed": 1, "tags": written.tags,
         "config": written.config.to_dict()}])
    write_json(study.transfer_done, [{"model": "target", "arm": "global",
                                      "runs": [written.run_id]}])
    later = smoke_spec(models__target__parallel={"strategy": "fsdp", "micro_batch": 4})
    (run,) = transferred_runs(later, study)
    assert run.config.parallel == ParallelConfig(strategy="fsdp", micro_batch=4)
    assert written.config.parallel == ParallelConfig()
    assert run.run_id == written.run_id and run.tags == written.tags
