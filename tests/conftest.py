"""Shared fixtures: an isolated corpus cache and tiny run configs that train in seconds."""

import dataclasses

import pytest

from cp.config import ArchConfig, RunConfig, TrainConfig
from cp.scaling import HPs, Scale


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tokenised corpora go to a fresh cache, so tests never depend on a user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CP_CACHE_DIR", str(tmp_path_factory.mktemp("cp-cache")))
    yield
    mp.undo()


TINY = Scale(width=32, depth=2, batch=8, tokens=8 * 32 * 40, seq_len=32)


def tiny_run(**changes) -> RunConfig:
    """A 40-step run of a 2-block, width-32 model (about a second on a CPU)."""
    cfg = RunConfig(scale=TINY, base_scale=TINY, arch=ArchConfig(head_dim=16),
                    hps=HPs(lr=1e-2), train=TrainConfig(evals=4, eval_sequences=16,
                                                        log_every=5))
    cfg.runtime.checkpoint_seconds = 0
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def tiny():
    return tiny_run


@pytest.fixture(scope="session")
def tracked_smoke(tmp_path_factory):
    """specs/smoke.yaml through Snakemake with MLFLOW_TRACKING_URI pointing at a real MLflow
    server. The server is stopped once the sweep stage is over (its process, and so its
    logging, has finished when the select stage starts): the later stages run against a store
    that is down. Then a server comes back on the same database and `cpt sync` runs twice.
    One study run serves the tracking and the report tests."""
    import os
    import subprocess
    import sys
    import time

    from mlflow import MlflowClient

    from tests.study_helpers import MlflowServer, TrackedStudy, copy_workflow, cpt

    root = tmp_path_factory.mktemp("tracked")
    work = root / "work"
    work.mkdir()
    copy_workflow(work)
    server = MlflowServer(root / "store.db", root / "artifacts", root / "server.log").start()
    t = TrackedStudy(workdir=work, study=work / "results" / "smoke", server=server)
    log = root / "pipeline.log"
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--config",
                 "spec=specs/smoke.yaml"], cwd=work, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "MLFLOW_TRACKING_URI": server.uri}, start_new_session=True)
        deadline = time.time() + 900
        while not (t.study / "select" / "stage.json").exists():
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("the study never got past its sweep:\n" + log.read_text()[-5000:])
            time.sleep(0.2)
        client = MlflowClient(server.uri)
        exp = client.get_experiment_by_name("smoke")
        for r in client.search_runs([exp.experiment_id], max_results=1000):
            if r.data.tags.get("cp.role") == "run":
                history = client.get_metric_history(r.info.run_id, "val_loss")
                t.live_children[r.data.tags["cp.stage"], r.data.tags["cp.run_id"]] = (
                    r, [(m.step, m.value) for m in history])
            else:
                t.live_parents[r.data.tags["cp.stage"]] = r
        server.stop()  # mid-study: select has just started
        t.pipeline_rc = proc.wait(900)
        t.pipeline_out = log.read_text()
        server.log = root / "server2.log"
        server.start()  # same database, a new port
        client = MlflowClient(server.uri)
        for _ in range(2):
            out = cpt("sync", str(t.study), "--uri", server.uri)
            t.sync_out.append((out.returncode, out.stdout + out.stderr))
            t.runs_after_sync.append(len(client.search_runs([exp.experiment_id],
                                                            max_results=1000)))
        yield t
    finally:
        server.stop()


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster (tests/slurm_cluster.py), up for the whole session."""
    from tests.slurm_cluster import ClusterUnavailable, local_cluster

    cluster = local_cluster()
    try:
        cluster.__enter__()
    except ClusterUnavailable as e:
        pytest.skip(f"SLURM TESTS NOT RUN -- the local cluster cannot start: {e}")
    yield
    cluster.__exit__(None, None, None)
