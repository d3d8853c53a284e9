"""Each kind of study file truncated or swapped with another's: the reader names it, sets it
aside (renamed, never deleted) and it is redone -- by the stage that reads it where the
pipeline can, else with a message saying what to redo -- to the uninterrupted study's
numbers."""

import json
import shutil

import polars as pl
import pytest

from cp.config import RunConfig
from cp.train import train
from tests.faults.helpers import (
    assert_kept,
    assert_no_traceback,
    assert_same_numbers,
    assert_trained_once,
    cpt,
    events,
    finish,
    pipeline,
    results_now,
    workflow,
)

LOCAL = ["--set", "launcher.kind=local", "--set", "launcher.workers=0"]


@pytest.fixture
def copy(reference, tmp_path):
    """A workflow with a copy of the finished reference study in its results folder."""
    work = workflow(tmp_path / "work")
    shutil.copytree(reference.study, work / "results" / "smoke")
    return work, work / "results" / "smoke"


def sweep_runs(study):
    return sorted(set(pl.read_parquet(study / "sweep" / "runs.parquet")["run_id"]))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def set_aside(path):
    return list(path.parent.glob(path.name + ".corrupt-*"))


def unfinished_with_checkpoint(study, run_id, steps):
    """The run as a kill would leave it: no result, a checkpoint after ``steps`` steps."""
    folder = study / "runs" / run_id
    cfg = RunConfig.from_dict(json.loads((folder / "config.json").read_text())["config"])
    for name in ("result.json", "events.jsonl"):
        (folder / name).unlink()
    train(cfg, folder, stop_after=steps)
    assert (folder / "checkpoint.pt").exists()
    return folder / "checkpoint.pt"


@pytest.mark.slow
def test_damaged_run_files_are_set_aside_and_their_runs_trained_again(copy, reference):
    work, study = copy
    a, b, c, d, e, f, g = sweep_runs(study)[:7]
    run = study / "runs"
    truncate(run / a / "result.json")                                      # truncated result
    shutil.copy(run / g / "result.json", run / b / "result.json")          # another's result
    truncate(run / c / "config.json")                                      # truncated config
    shutil.copy(run / g / "config.json", run / d / "config.json")          # another's config
    truncate(unfinished_with_checkpoint(study, e, 20))                     # truncated checkpoint
    ckpt_f = unfinished_with_checkpoint(study, f, 20)                      # another's checkpoint
    shutil.copy(unfinished_with_checkpoint(study, g, 30), ckpt_f)
    before = results_now(study)
    out = cpt("stage", "sweep", work / "specs" / "smoke.yaml", "--results", work / "results",
              *LOCAL, cwd=work)
    assert out.returncode == 0, out.stderr[-4000:]
    assert_no_traceback(out.stderr)
    for rid, name in ((a, "result.json"), (b, "result.json"), (c, "config.json"),
                      (d, "config.json"), (e, "checkpoint.pt"), (f, "checkpoint.pt")):
        path = run / rid / name
        assert str(path) in out.stderr, (path, out.stderr[-3000:])
        assert set_aside(path), f"{path} was not kept as {path.name}.corrupt-*"
    assert "is the result of run" in out.stderr and "is the config of run" in out.stderr
    assert "is the checkpoint of run" in out.stderr
    assert_kept(study, before, except_={a, b, c, d, e, f, g})
    assert_trained_once(study, again={a, b, c, d})
    for rid in (e, f):  # started afresh from step 0, not from the bad checkpoint
        assert not [x for x in events(study, rid) if x["event"] == "resumed"]
    assert [x["step"] for x in events(study, g) if x["event"] == "resumed"] == [30]
    assert_same_numbers(study, reference.study)


@pytest.mark.slow
def test_a_damaged_stage_table_is_rebuilt_by_the_stage_that_reads_it(copy, reference):
    work, study = copy
    truncate(study / "sweep" / "runs.parquet")
    (study / "select" / "global.json").unlink()
    before = results_now(study)
    out = cpt("stage", "select", work / "specs" / "smoke.yaml", "--results", work / "results",
              *LOCAL, cwd=work)
    assert out.returncode == 0, out.stderr[-4000:]
    assert f"{study / 'sweep' / 'runs.parquet'} is corrupt" in out.stderr
    assert "redoing stage sweep" in out.stderr
    assert set_aside(study / "sweep" / "runs.parquet")
    assert_kept(study, before)  # the sweep's runs were cached: nothing trained
    assert_trained_once(study)
    assert_same_numbers(study, reference.study)


@pytest.mark.slow
def test_a_damaged_search_state_is_set_aside_and_the_search_redone(copy, reference):
    work, study = copy
    for name in ("best.json", "runs.parquet", "trials.parquet"):
        (study / "search" / name).unlink()  # as if killed before it wrote them
    shutil.copy(study / "select" / "global.json", study / "search" / "state.json")  # swapped
    before = results_now(study)
    out = cpt("stage", "search", work / "specs" / "smoke.yaml", "--results", work / "results",
              *LOCAL, cwd=work)
    assert out.returncode == 0, out.stderr[-4000:]
    state = study / "search" / "state.json"
    assert f"{state} is corrupt" in out.stderr and set_aside(state)
    assert_kept(study, before)  # the search's trials were cached: asked again, not trained
    assert_trained_once(study)
    assert_same_numbers(study, reference.study)


def test_damaged_event_logs_are_set_aside_when_read(copy, tmp_path):
    work, study = copy
    a, b = sweep_runs(study)[:2]
    log_a, log_b = study / "runs" / a / "events.jsonl", study / "runs" / b / "events.jsonl"
    log_a.write_text(log_a.read_text()[:-7])  # the last line torn by a kill
    shutil.copy(study / "runs" / sweep_runs(study)[2] / "events.jsonl", log_b)  # another's
    out = cpt("sync", study, "--uri", f"sqlite:///{tmp_path / 'fresh.db'}", cwd=work)
    assert out.returncode == 0, out.stderr[-4000:]  # a fresh store: every run's log is read
    assert str(log_a) in out.stderr and str(log_b) in out.stderr
    assert set_aside(log_a) and set_aside(log_b)
    assert [e["event"] for e in events(study, a)] == ["start"]  # the torn line left out
    assert events(study, b) == []  # not this run's history


@pytest.mark.slow
def test_a_corrupt_result_found_by_the_report_says_what_to_redo(copy, reference):
    work, study = copy
    target = json.loads((study / "transfer" / "done.json").read_text())[0]["runs"][0]
    result = study / "runs" / target / "result.json"
    result.write_text("{}")
    before = results_now(study)
    out = cpt("report", study, cwd=work)
    assert out.returncode == 1  # a fault of the folder
    assert_no_traceback(out.stderr)
    assert f"{result} is corrupt" in out.stderr and "missing field(s)" in out.stderr
    assert "--forcerun target" in out.stderr and set_aside(result)
    rc, log = finish(pipeline(work, "--forcerun", "target"))
    assert rc == 0, log[-4000:]
    assert_kept(study, before, except_={target})
    assert_trained_once(study, again={target})
    assert_same_numbers(study, reference.study)
