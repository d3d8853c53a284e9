"""End to end: specs/smoke.yaml through Snakemake, killed mid-sweep and restarted."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from cp.study import RunFolder

REPO = Path(__file__).parent.parent


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow, so the test's .snakemake and results stay out of the repo."""
    for name in ("Snakefile", "workflow", "profiles", "specs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


def snakemake(workdir, *extra, **kw):
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--config",
           "spec=specs/smoke.yaml", *extra]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def events(run_dir):
    return [json.loads(x)["event"] for x in RunFolder(run_dir).events.read_text().splitlines()]


@pytest.mark.slow
def test_smoke_study_survives_a_kill_mid_sweep(workdir):
    study = workdir / "results" / "smoke"
    runs = study / "runs"
    proc = snakemake(workdir)
    deadline = time.time() + 300
    while time.time() < deadline:
        done = list(runs.glob("*/result.json")) if runs.exists() else []
        if len(done) >= 3 and not (study / "sweep" / "runs.parquet").exists():
            break
        if proc.poll() is not None:
            pytest.fail("the pipeline ended before it could be killed:\n" + proc.stdout.read())
        time.sleep(0.05)
    else:
        pytest.fail("the sweep never got going")
    os.killpg(proc.pid, signal.SIGKILL)  # the whole tree: snakemake, the stage, its workers
    proc.wait()
    assert not (study / "sweep" / "runs.parquet").exists(), "killed too late: sweep finished"

    before = {p.parent.name: (p.stat().st_mtime_ns, p.read_text())
              for p in runs.glob("*/result.json")}
    assert len(before) >= 3

    subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/local",
                    "--config", "spec=specs/smoke.yaml", "--unlock"], cwd=workdir, check=True,
                   capture_output=True)
    proc = snakemake(workdir)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert (study / "report" / "report.md").exists()
    assert "already have results" in out or "cached" in out

    for run_id, (mtime, text) in before.items():          # every finished run kept ...
        result = runs / run_id / "result.json"
        assert result.stat().st_mtime_ns == mtime and result.read_text() == text
        assert events(runs / run_id) == ["start", "finish"]  # ... and never trained again
    for run_dir in runs.iterdir():                         # and nothing ran twice to the end
        assert events(run_dir).count("finish") == 1, run_dir.name

    sweep = pl.read_parquet(study / "sweep" / "runs.parquet")
    assert set(before) <= set(sweep["run_id"])
    assert sweep["status"].to_list().count("completed") == len(sweep)
    report = (study / "report" / "report.md").read_text()
    assert "## Transfer sweeps" in report and "## Targets" in report and "speedup" in report


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
