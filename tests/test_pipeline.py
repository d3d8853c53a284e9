"""cp.pipeline: what each stage plans, and which stage redoes a corrupt file (the pipeline
killed and resumed, and every kind of damaged file, are in tests/faults/)."""

from cp.pipeline import owner_of
from cp.stages.base import result_row, write_runs_table
from cp.study import Study


def test_plan_counts_runs_and_tokens_per_stage():
    from cp.pipeline import plan
    from cp.stages.sweep import sweep_runs
    from tests.study_helpers import smoke_spec

    spec = smoke_spec()
    stages = {p.stage: p for p in plan(spec)}
    assert list(stages) == ["check", "sweep", "select", "search", "transfer", "target",
                            "report"]
    assert stages["sweep"].runs == len({r.run_id for r in sweep_runs(spec)})
    assert stages["search"].runs == spec.search.trials + 2 * len(spec.search.reeval_seeds)
    target = spec.models["target"]
    assert stages["target"].tokens == len(spec.arms) * target.tokens


def test_a_corrupt_file_is_redone_by_the_stage_that_writes_it(tmp_path, tiny):
    from cp.config import PlannedRun, RunResult

    study = Study(tmp_path / "s")
    pr = PlannedRun(tiny(), {"stage": "sweep"})
    result = RunResult.failed(pr.run_id, "x", 40)
    write_runs_table(study, "sweep", [result_row(pr, result)])
    assert owner_of(study, study.sweep_table, "select") == "sweep"
    assert owner_of(study, study.search_state, "search") == "search"
    assert owner_of(study, study.run(pr.run_id).result, "report") == "sweep"
    assert owner_of(study, study.run("0" * 16).result, "target") == "target"  # its own run
    assert owner_of(study, study.spec_file, "report") == "report"
