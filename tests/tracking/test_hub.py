"""The pipeline's tracking hub: a stage logs through it without importing mlflow itself, ends
with its logging in the store, says the hub's warning once, and tracks by itself when there
is no hub to reach."""

import json
import os
import subprocess
import sys

from mlflow import MlflowClient

from cp.study import Study
from cp.tracking.hub import ENV_HUB, Hub
from tests.study_helpers import free_port, smoke_spec

# A stage as a pipeline job runs it: in a process of its own.
STAGE = """
import json, sys
from cp.pipeline import run_stage
from cp.spec import read_study_spec
from cp.study import Study
from pathlib import Path
study = Study(Path(sys.argv[1]))
run_stage("sweep", read_study_spec(study), study, echo=lambda _: None)
print(json.dumps({"mlflow imported": "mlflow" in sys.modules}))
"""


def one_run_study(tmp_path, **changes):
    spec = smoke_spec(sweeps__grid={"lr": [0.01]}, sweeps__axes={},
                      sweeps__parameterisations=[], check__enabled=False, **changes)
    study = Study(tmp_path / "smoke")
    spec.save(study)
    return study


def run_stage_process(study, env):
    out = subprocess.run([sys.executable, "-c", STAGE, str(study.root)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def stage_runs(study):
    client = MlflowClient(f"sqlite:///{study.mlflow_db}")
    exp = client.get_experiment_by_name("smoke")
    return client.search_runs([exp.experiment_id], max_results=100)


def test_a_stage_logs_through_the_hub_without_importing_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = one_run_study(tmp_path)
    hub = Hub()
    try:
        env = {**dict(os.environ), **hub.environ}
        seen, err = run_stage_process(study, env)
    finally:
        hub.close()
    assert seen == {"mlflow imported": False}  # the stage paid nothing for mlflow
    assert "warning" not in err
    runs = stage_runs(study)  # and when it ended, its logging was in the store
    (parent,) = [r for r in runs if r.data.tags.get("cp.role") == "stage"]
    (child,) = [r for r in runs if r.data.tags.get("cp.role") == "run"]
    assert parent.info.status == "FINISHED" and "cp.outputs" in parent.data.tags
    assert parent.data.tags["cp.logged_by"] == "hub"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED" and child.data.params["hps.lr"] == "0.01"


def test_a_store_that_is_down_is_warned_about_once_by_the_stage_through_the_hub(tmp_path,
                                                                               monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    study = one_run_study(tmp_path, tracking__uri=down)
    hub = Hub()
    try:
        _, err = run_stage_process(study, {**dict(os.environ), **hub.environ})
    finally:
        hub.close()
    assert err.count("cpt: warning: MLflow tracking at http://127.0.0.1") == 1, err
    assert "failed in stage sweep" in err and "cpt sync" in err
    assert json.loads(study.stage_record("sweep").read_text())["status"] == "done"


def test_a_stage_that_cannot_reach_the_hub_tracks_by_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    study = one_run_study(tmp_path)
    gone = json.dumps({"address": str(tmp_path / "no-such-socket"), "key": "00"})
    seen, err = run_stage_process(study, {**dict(os.environ), ENV_HUB: gone})
    assert seen == {"mlflow imported": True} and "warning" not in err
    statuses = {r.data.tags.get("cp.role"): r.info.status for r in stage_runs(study)}
    assert statuses == {"stage": "FINISHED", "run": "FINISHED"}
    (parent,) = [r for r in stage_runs(study) if r.data.tags.get("cp.role") == "stage"]
    assert parent.data.tags["cp.logged_by"] == "stage"


def test_the_pipeline_logs_every_stage_through_its_hub(tracked_smoke):
    """The Snakefile starts the hub and its stages reach it (a stage that could not would
    still log, by itself, so only this tag tells)."""
    for stage in ("check", "sweep"):  # logged live, before the server went down
        assert tracked_smoke.live_parents[stage].data.tags["cp.logged_by"] == "hub"
