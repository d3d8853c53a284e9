"""The search stage: a killed search resumes with exactly the trials it had; every algorithm
runs in it."""

import json
import math

import polars as pl
import pytest

from cp.execute import read_events
from cp.pipeline import run_stage
from cp.study import Study
from tests.study_helpers import quiet, smoke_spec


class Killed(Exception):
    """Stands in for the stage process being killed."""


def search_spec(algorithm, trials=6):
    return smoke_spec(sweeps__grid={}, search__algorithm=algorithm, search__trials=trials,
                      search__parallel=2, search__reeval_seeds=[1])


def test_a_search_killed_after_k_trials_resumes_with_exactly_those_trials(tmp_path):
    spec = search_spec("trrs", trials=8)
    study = Study(tmp_path / "s")
    run_stage("select", spec, study, echo=quiet)
    finished = []

    def kill_after_three(pr, result):
        finished.append(pr.run_id)
        if len(finished) == 3:
            raise Killed

    with pytest.raises(Killed):
        run_stage("search", spec, study, on_result=kill_after_three, echo=quiet)
    before = json.loads(study.search_state.read_text())["trials"]
    assert len(before) == 3                     # the centre on 3 seeds: 2 told, 1 in flight
    assert [t["loss"] is not None for t in before] == [True, True, False]

    run_stage("search", spec, study, echo=quiet)
    after = json.loads(study.search_state.read_text())["trials"]
    assert len([t for t in after if t["purpose"] in ("explore", "reeval")]) == 8
    for old, new in zip(before, after, strict=False):   # the same trials, in order ...
        assert (old["x"], old["seed"]) == (new["x"], new["seed"])
        if old["loss"] is not None:
            assert old["loss"] == new["loss"]
    for run_dir in study.runs_dir.iterdir():               # ... none trained twice
        finishes = [e for e in read_events(study.run(run_dir.name)) if e["event"] == "finish"]
        assert len(finishes) == 1, run_dir.name


@pytest.mark.parametrize("algorithm", ["random", "trrs", "tpe", "cmaes"])
def test_every_search_algorithm_runs_in_the_search_stage(algorithm, tmp_path):
    spec = search_spec(algorithm, trials=4)
    study = Study(tmp_path / "s")
    run_stage("select", spec, study, echo=quiet)
    best = run_stage("search", spec, study, echo=quiet)
    assert best["algorithm"] == algorithm and best["trials"] == 4
    assert math.isfinite(best["reeval"]["mean"]) and math.isfinite(best["global_reeval"]["mean"])
    trials = pl.read_parquet(study.search_trials)
    assert len(trials) == 4 and trials["loss"].is_finite().all()
