"""MLflow tracking: the smoke study against a real tracking server that goes down mid-study,
`cpt sync` filling the store without duplicates, the embedded default store, and a store that
is down never failing a stage."""

import json
import shutil
from collections import Counter

import polars as pl
import pytest
from mlflow import MlflowClient

from cp.pipeline import run_stage
from cp.spec import read_study_spec
from cp.stages import NAMES as STAGES
from cp.study import Study
from tests.study_helpers import free_port

TRAINING_STAGES = {"sweep": "sweep/runs.parquet", "search": "search/runs.parquet",
                   "target": "target/runs.parquet"}


def planned(study):
    """(stage, run id) of every training run the study's tables list."""
    return {(stage, rid) for stage, table in TRAINING_STAGES.items()
            for rid in pl.read_parquet(study / table)["run_id"].unique()}


def experiment_runs(uri, name="smoke"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def result(study, run_id):
    return json.loads((study / "runs" / run_id / "result.json").read_text())


@pytest.mark.slow
def test_stages_log_to_a_tracking_server_while_it_is_up(tracked_smoke):
    t = tracked_smoke
    assert {"check", "sweep"} <= set(t.live_parents)  # they ran before it went down
    for stage in ("check", "sweep"):  # finished, with their outputs
        assert t.live_parents[stage].info.status == "FINISHED"
        assert "cp.outputs" in t.live_parents[stage].data.tags
    sweep_ids = set(pl.read_parquet(t.study / "sweep" / "runs.parquet")["run_id"])
    live_sweep = {rid: v for (stage, rid), v in t.live_children.items() if stage == "sweep"}
    assert set(live_sweep) == sweep_ids  # each training run once, as it finished
    parent = t.live_parents["sweep"].info.run_id
    for rid, (run, val_loss) in live_sweep.items():
        assert run.data.tags["mlflow.parentRunId"] == parent
        res = result(t.study, rid)
        assert sorted(val_loss) == [(e["step"], pytest.approx(e["val_loss"]))
                                    for e in res["eval_curve"]]
        config = json.loads((t.study / "runs" / rid / "config.json").read_text())["config"]
        assert run.data.params["hps.lr"] == str(config["hps"]["lr"])
        assert run.data.tags["status"] == res["status"]


@pytest.mark.slow
def test_a_server_that_goes_down_never_fails_the_study_and_warns_once_per_stage(tracked_smoke):
    t = tracked_smoke
    assert t.pipeline_rc == 0, t.pipeline_out[-5000:]
    assert (t.study / "report" / "report.md").exists()
    warnings = Counter(stage for stage in STAGES for line in t.pipeline_out.splitlines()
                       if f"MLflow tracking at {t.server.uri.rsplit(':', 1)[0]}" in line
                       and f"failed in stage {stage} " in line)
    for stage in ("search", "transfer", "target", "report"):  # ran with the server down
        assert warnings[stage] == 1, t.pipeline_out[-5000:]
    assert all(n <= 1 for n in warnings.values())
    assert warnings["check"] == warnings["sweep"] == 0  # they ran with the server up


@pytest.mark.slow
def test_sync_fills_the_store_with_every_stage_and_run_exactly_once(tracked_smoke):
    t = tracked_smoke
    assert t.sync_out[0][0] == 0, t.sync_out[0][1]
    client, runs = experiment_runs(t.server.uri)
    assert [e.name for e in client.search_experiments() if e.name != "Default"] == ["smoke"]

    parents = {r.info.run_id: r for r in runs if r.data.tags.get("cp.role") == "stage"}
    assert sorted(r.data.tags["cp.stage"] for r in parents.values()) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in parents.values())

    children = [r for r in runs if r.data.tags.get("cp.role") == "run"]
    keys = Counter((r.data.tags["cp.stage"], r.data.tags["cp.run_id"]) for r in children)
    assert set(keys) == planned(t.study) and set(keys.values()) == {1}
    assert len(runs) == len(parents) + len(children)

    for r in children:
        parent = parents[r.data.tags["mlflow.parentRunId"]]
        assert parent.data.tags["cp.stage"] == r.data.tags["cp.stage"] == r.data.tags["stage"]
        rid = r.data.tags["cp.run_id"]
        config = json.loads((t.study / "runs" / rid / "config.json").read_text())["config"]
        assert r.data.params["hps.lr"] == str(config["hps"]["lr"])
        assert r.data.params["scale.width"] == str(config["scale"]["width"])
        assert r.data.params["parameterisation.name"] == config["parameterisation"]["name"]
        assert r.data.tags["mlflow.source.git.commit"]
        res = result(t.study, rid)
        history = [(m.step, m.value) for m in client.get_metric_history(r.info.run_id,
                                                                         "val_loss")]
        assert sorted(history) == [(e["step"], pytest.approx(e["val_loss"]))
                                   for e in res["eval_curve"]]
        assert client.get_metric_history(r.info.run_id, "train_loss")
        assert r.data.metrics["diverged"] == 0.0 and r.data.metrics["tokens_per_s"] > 0
        assert r.info.status == "FINISHED"
    target = [r for r in children if r.data.tags["cp.stage"] == "target"]
    assert {r.data.tags["arm"] for r in target} | {
        a.split("=")[1] for r in target for a in r.data.tags.get("also", "").split("; ") if a
    } == {"global", "per_module"}

    by_stage = {r.data.tags["cp.stage"]: r.info.run_id for r in parents.values()}
    report = [a.path for a in client.list_artifacts(by_stage["report"], "report")]
    assert "report/report.html" in report and "report/report.md" in report
    settings = client.list_artifacts(by_stage["transfer"], "transfer/target/global")
    assert "transfer/target/global/settings.json" in [a.path for a in settings]
    assert [a.path for a in client.list_artifacts(children[0].info.run_id)] == ["config.json"]


@pytest.mark.slow
def test_sync_twice_adds_nothing(tracked_smoke):
    t = tracked_smoke
    (rc1, out1), (rc2, out2) = t.sync_out
    assert rc1 == rc2 == 0, out1 + out2
    assert "0 run(s) logged, 0 replaced" in out2 and "outputs of 0 stage(s)" in out2
    assert t.runs_after_sync[0] == t.runs_after_sync[1]


# ---------------------------------------------------------------------------------------------
# Without a server.


@pytest.fixture
def study_copy(tracked_smoke, tmp_path, monkeypatch):
    """The finished smoke study, without its tracking (a fresh copy per test)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    dest = tmp_path / "smoke"
    shutil.copytree(tracked_smoke.study, dest)
    return Study(dest)


@pytest.mark.slow
def test_the_embedded_store_in_the_study_folder_is_the_default(study_copy):
    spec = read_study_spec(study_copy)
    for _ in range(2):  # a re-run stage reuses its parent run
        run_stage("report", spec, study_copy, echo=lambda _: None)
    db = study_copy.root / "mlflow.db"
    assert db.exists()
    client, runs = experiment_runs(f"sqlite:///{db}")
    assert [r.data.tags["cp.stage"] for r in runs] == ["report"]
    (parent,) = runs
    assert parent.info.status == "FINISHED"
    assert "report/report.html" in [a.path for a in client.list_artifacts(parent.info.run_id,
                                                                          "report")]
    summary = json.loads((study_copy.report_dir / "summary.json").read_text())
    assert parent.data.metrics == pytest.approx(summary["metrics"])


@pytest.mark.slow
def test_a_store_that_is_down_never_fails_a_stage_and_warns_once(study_copy, capsys):
    spec = read_study_spec(study_copy)
    spec.tracking.uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (study_copy.root / "select" / "global.json").unlink()
    run_stage("select", spec, study_copy, echo=lambda _: None)
    assert (study_copy.root / "select" / "global.json").exists()
    err = capsys.readouterr().err
    assert err.count("cpt: warning: MLflow tracking") == 1 and "cpt sync" in err
    record = json.loads((study_copy.root / "select" / "stage.json").read_text())
    assert record["status"] == "done"


def test_a_study_without_a_sweep_grid_tracks_and_syncs_without_a_false_warning(tmp_path,
                                                                               capsys,
                                                                               monkeypatch):
    """The sweep's runs table of a study with no grid used to have no columns: the stage
    warned that tracking failed, and `cpt sync` stopped on ColumnNotFoundError."""
    from cp.tracking import sync
    from tests.study_helpers import smoke_spec

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = smoke_spec(sweeps={"grid": {}}, check__enabled=False)
    study = Study(tmp_path / "smoke")
    run_stage("sweep", spec, study, echo=lambda _: None)
    assert "warning" not in capsys.readouterr().err
    assert pl.read_parquet(study.sweep_table).columns[:1] == ["run_id"]
    rep = sync(study, spec.tracking, spec.name, echo=lambda _: None)
    assert rep.stages == ["sweep"] and rep.logged == 0


def test_values_from_the_environment_are_not_uploaded(tmp_path, monkeypatch, tiny):
    """A value written as ${oc.env:X} stays written so in the spec MLflow shows, and in a
    training run's params and config.json."""
    import yaml

    from cp.spec import load_spec
    from tests.study_helpers import SMOKE

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    corpus = tmp_path / "secret-corpus-name.txt"
    corpus.write_text((SMOKE.parent.parent / "README.md").read_text() * 4)
    monkeypatch.setenv("CP_TEST_CORPUS", str(corpus))
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"] = {"corpus": "${oc.env:CP_TEST_CORPUS}"}
    raw["sweeps"] = {"grid": {"lr": [0.01]}}
    raw["models"]["proxy"]["tokens"] = 8 * 32 * 8
    raw["train"]["evals"] = 1
    raw["launcher"] = {"kind": "inline"}
    path = tmp_path / "env.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    study = Study(tmp_path / "smoke")
    run_stage("sweep", spec, study, echo=lambda _: None)
    client, runs = experiment_runs(f"sqlite:///{study.root / 'mlflow.db'}")
    leaked = []
    for r in runs:
        if any("secret-corpus-name" in v for v in r.data.params.values()):
            leaked.append(f"params of {r.info.run_name}")
        for art in client.list_artifacts(r.info.run_id) + client.list_artifacts(
                r.info.run_id, "sweep"):
            if art.is_dir:
                continue
            from pathlib import Path

            text = Path(client.download_artifacts(r.info.run_id, art.path,
                                                  str(tmp_path))).read_bytes()
            if b"secret-corpus-name" in text:
                leaked.append(art.path)
    assert not leaked, leaked
    child = next(r for r in runs if r.data.tags.get("cp.role") == "run")
    assert child.data.params["data.corpus"] == "${oc.env:CP_TEST_CORPUS}"
