"""Stages run directly (inline launcher): a diverged run is a recorded result and the study
goes on; the guard stops a failing parameterisation; transfer writes the settings."""

import json
import math
from pathlib import Path

import polars as pl
import pytest
import yaml

from cp.spec import build_spec
from cp.stages import StageFailed, run_stage
from cp.study import Study

SMOKE = yaml.safe_load((Path(__file__).parent.parent / "specs" / "smoke.yaml").read_text())


def spec_with(**changes):
    raw = json.loads(json.dumps(SMOKE))
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    raw["launcher"] = {"kind": "inline"}
    return build_spec(raw)


def quiet(_):
    pass


def test_a_diverged_sweep_point_is_recorded_and_the_optimum_ignores_it(tmp_path):
    spec = spec_with(sweeps__grid={"lr": [0.003, 0.01, 1000.0]}, sweeps__axes={},
                     sweeps__parameterisations=[])
    study = Study(tmp_path / "s")
    rows = run_stage("sweep", spec, study, echo=quiet)
    by_lr = {r["lr"]: r for r in rows}
    assert by_lr[1000.0]["diverged"] and by_lr[1000.0]["loss"] == math.inf
    assert by_lr[0.01]["status"] == "completed"
    selected = run_stage("select", spec, study, echo=quiet)
    assert 0.003 <= selected["completed_p"]["values"]["lr"] <= 0.03


def test_the_check_stops_a_failing_parameterisation_with_the_plot_path(tmp_path):
    spec = spec_with(parameterisation={"name": "sp"})
    study = Study(tmp_path / "s")
    with pytest.raises(StageFailed, match=r"coordinate check failed for sp: .*coord_check\.png"):
        run_stage("check", spec, study, echo=quiet)
    assert not study.check_verdict.exists()


def test_transfer_writes_each_target_arms_settings_for_another_trainer(tmp_path):
    spec = spec_with(sweeps__grid={"lr": [0.003, 0.01]}, sweeps__axes={},
                     sweeps__parameterisations=[], search__trials=2, search__reeval_seeds=[1])
    study = Study(tmp_path / "s")
    for stage in ("sweep", "select", "search", "transfer"):
        run_stage(stage, spec, study, echo=quiet)
    for arm in ("global", "per_module"):
        settings = json.loads((study.transfer_dir("target", arm) / "settings.json").read_text())
        assert settings["scale"]["width"] == spec.models["target"].width
        assert {g["group"] for g in settings["groups"]} >= {"embedding", "attn_q",
                                                            "unembedding"}
    best = json.loads(study.search_best.read_text())
    assert best["trials"] == 2 and best["reeval"]["seeds"] == [1]
    trials = pl.read_parquet(study.search_dir / "trials.parquet")
    assert len(trials) == 2                     # the budget counts every training run


class Killed(Exception):
    """Stands in for the stage process being killed."""


def search_spec(algorithm, trials=6):
    return spec_with(sweeps__grid={}, search__algorithm=algorithm, search__trials=trials,
                     search__batch=2, search__reeval_seeds=[1])


def test_a_search_killed_after_k_trials_resumes_with_exactly_those_trials(tmp_path):
    from cp.launch import EVENTS_FILE

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
    state = json.loads((study.search_dir / "state.json").read_text())
    before = state["trials"]
    assert len(before) == 3                     # the centre on 3 seeds: 2 told, 1 in flight
    assert [t["loss"] is not None for t in before] == [True, True, False]

    run_stage("search", spec, study, echo=quiet)
    after = json.loads((study.search_dir / "state.json").read_text())["trials"]
    assert len([t for t in after if t["purpose"] in ("explore", "reeval")]) == 8
    for old, new in zip(before, after, strict=False):   # the same trials, in order ...
        assert (old["x"], old["seed"]) == (new["x"], new["seed"])
        if old["loss"] is not None:
            assert old["loss"] == new["loss"]
    for run_dir in (study.root / "runs").iterdir():        # ... none trained twice
        events = (run_dir / EVENTS_FILE).read_text().count('"finish"')
        assert events == 1, run_dir.name


@pytest.mark.parametrize("algorithm", ["random", "trrs", "tpe", "cmaes"])
def test_every_search_algorithm_runs_in_the_search_stage(algorithm, tmp_path):
    spec = search_spec(algorithm, trials=4)
    study = Study(tmp_path / "s")
    run_stage("select", spec, study, echo=quiet)
    best = run_stage("search", spec, study, echo=quiet)
    assert best["algorithm"] == algorithm and best["trials"] == 4
    assert math.isfinite(best["reeval"]["mean"]) and math.isfinite(best["global_reeval"]["mean"])
    trials = pl.read_parquet(study.search_dir / "trials.parquet")
    assert len(trials) == 4 and trials["loss"].is_finite().all()
