"""The launcher: finished runs are never trained again, a crash is a recorded result, the batch
goes on."""

import json

import pytest

from cp.config import PlannedRun
from cp.launch import launch
from cp.resources import LauncherSpec
from cp.scaling import HPs
from cp.study import Study
from tests.launch_helpers import CRASH_LR, DIE_LR, crashing


def planned(tiny, lr, **tags):
    return PlannedRun(tiny(hps=HPs(lr=lr)), {"lr": lr, **tags})


def events(study, run_id):
    path = study.run(run_id).events
    return [json.loads(line)["event"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("kind", ["inline", "local"])
def test_runs_with_results_are_skipped_and_duplicates_run_once(tiny, tmp_path, kind):
    study = Study(tmp_path)
    runs = [planned(tiny, 0.01), planned(tiny, 0.01, again=True), planned(tiny, 0.003)]
    launcher = LauncherSpec(kind=kind, workers=2)
    first = launch(runs, study, launcher, "t", echo=lambda m: None)
    assert len(first) == 2 and all(r.ok for r in first.values())
    lines = []
    again = launch(runs, study, launcher, "t", echo=lines.append)
    assert {k: v.final_val_loss for k, v in again.items()} == {
        k: v.final_val_loss for k, v in first.items()}
    assert "already have results" in lines[-1]
    for rid in first:
        assert events(study, rid) == ["start", "finish"]  # trained exactly once


@pytest.mark.parametrize("kind", ["inline", "local"])
def test_a_crashing_run_is_recorded_as_failed_and_the_rest_complete(tiny, tmp_path, kind):
    study = Study(tmp_path)
    runs = [planned(tiny, CRASH_LR), planned(tiny, 0.01)]
    results = launch(runs, study, LauncherSpec(kind=kind, workers=2), "t",
                     echo=lambda m: None, fn=crashing)
    crashed, fine = results[runs[0].run_id], results[runs[1].run_id]
    assert crashed.status == "failed" and "injected crash" in crashed.reason
    assert fine.ok
    assert study.run(runs[0].run_id).load_result().status == "failed"  # on disk


def test_a_dying_worker_is_retried_once_then_recorded(tiny, tmp_path):
    study = Study(tmp_path)
    runs = [planned(tiny, DIE_LR), planned(tiny, 0.01), planned(tiny, 0.003)]
    lines = []
    results = launch(runs, study, LauncherSpec(kind="local", workers=2), "t",
                     echo=lines.append, fn=crashing)
    assert results[runs[0].run_id].status == "failed"
    assert "died twice" in results[runs[0].run_id].reason
    assert results[runs[1].run_id].ok and results[runs[2].run_id].ok
    assert any("worker process died" in line for line in lines)


def test_retry_failed_trains_failed_runs_again(tiny, tmp_path):
    study = Study(tmp_path)
    run = planned(tiny, 0.01)
    launch([run], study, LauncherSpec(kind="inline"), "t", echo=lambda m: None,
           fn=lambda cfg, d, t: (_ for _ in ()).throw(OSError("disk full")))
    assert study.run(run.run_id).load_result().status == "failed"
    kept = launch([run], study, LauncherSpec(kind="inline"), "t", echo=lambda m: None)
    assert kept[run.run_id].status == "failed"          # a failure is a result ...
    retried = launch([run], study, LauncherSpec(kind="inline", retry_failed=True), "t",
                     echo=lambda m: None)
    assert retried[run.run_id].ok                       # ... until asked to retry


def test_progress_lines_count_runs_and_give_an_eta(tiny, tmp_path):
    lines = []
    runs = [planned(tiny, lr) for lr in (0.003, 0.01)]
    launch(runs, Study(tmp_path), LauncherSpec(kind="inline"), "sweep", echo=lines.append)
    assert lines[0].startswith("[sweep] 2 runs to train")
    assert "[sweep] 1/2 runs" in lines[1] and "ETA" in lines[1]
    assert "[sweep] 2/2 runs" in lines[2]


def test_a_runs_progress_says_what_it_is(tiny, tmp_path):
    lines = []
    run = PlannedRun(planned(tiny, 0.01).config, {"axis": "width", "axis_value": 64})
    launch([run], Study(tmp_path), LauncherSpec(kind="inline"), "sweep", echo=lines.append)
    assert "axis=width axis_value=64" in lines[-1]


def test_workers_dying_before_any_run_starts_is_an_error_not_a_failed_run(tiny, tmp_path):
    from cp.execute import LaunchError
    from tests.launch_helpers import dies_before_starting

    study = Study(tmp_path)
    runs = [planned(tiny, 0.01), planned(tiny, 0.003)]
    with pytest.raises(LaunchError, match="__main__"):
        launch(runs, study, LauncherSpec(kind="local", workers=2), "t", echo=lambda m: None,
               fn=dies_before_starting)
    assert all(study.run(r.run_id).load_result() is None for r in runs)  # nothing cached


def worker_of(study, run):
    """(pid, whether torch._dynamo was imported before the run) of the process that ran it."""
    pid, warm = (study.run(run.run_id).path / "pid").read_text().split()
    return int(pid), warm == "1"


def test_a_stage_of_one_run_trains_it_in_a_worker_and_survives_its_death(tiny, tmp_path):
    """One run used to train inside the stage's own process: a run that killed its process
    (out of memory, a segfault) took the stage with it."""
    import os

    from tests.launch_helpers import records_pid

    study = Study(tmp_path)
    fine, dies = planned(tiny, 0.01), planned(tiny, DIE_LR)
    assert launch([fine], study, LauncherSpec(kind="local"), "t", echo=lambda m: None,
                  fn=records_pid)[fine.run_id].ok
    assert worker_of(study, fine)[0] != os.getpid()
    result = launch([dies], study, LauncherSpec(kind="local"), "t", echo=lambda m: None,
                    fn=records_pid)[dies.run_id]
    assert result.status == "failed" and "died twice" in result.reason


def test_warm_workers_serve_every_launch_of_a_stage_from_workers_started_before_it(tiny,
                                                                                 tmp_path):
    import os

    from cp.launch import warm_workers
    from tests.launch_helpers import records_pid

    study = Study(tmp_path)
    first, second = planned(tiny, 0.01), planned(tiny, 0.003)
    spec = LauncherSpec(kind="local", workers=1)
    with warm_workers(spec, lambda: 2):
        launch([first], study, spec, "t", echo=lambda m: None, fn=records_pid)
        launch([second], study, spec, "t", echo=lambda m: None, fn=records_pid)
    (pid1, warm1), (pid2, warm2) = worker_of(study, first), worker_of(study, second)
    assert pid1 == pid2 != os.getpid()  # one worker, kept across the stage's launches
    assert warm1 and warm2  # it had imported torch._dynamo before its first run


def test_a_worker_death_inside_warm_workers_leaves_later_launches_a_working_pool(tiny,
                                                                               tmp_path):
    from cp.launch import warm_workers
    from tests.launch_helpers import records_pid

    study = Study(tmp_path)
    dies, after = planned(tiny, DIE_LR), planned(tiny, 0.01)
    spec = LauncherSpec(kind="local", workers=2)
    with warm_workers(spec, lambda: 2):
        died = launch([dies], study, spec, "t", echo=lambda m: None, fn=records_pid)
        fine = launch([after], study, spec, "t", echo=lambda m: None, fn=records_pid)
    assert died[dies.run_id].status == "failed" and fine[after.run_id].ok
