"""Runs on a real SLURM cluster (single node on localhost, tests/slurm_cluster.py): the smoke
sweep through profiles/slurm gives the local launcher's numbers, a preempted job resumes from
its checkpoint, a job with several tasks trains data-parallel, a failed job is a recorded
result, and a restarted stage neither loses nor duplicates queued jobs."""

import dataclasses
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml

from cp.config import ParallelConfig, PlannedRun
from cp.execute import LaunchError, read_events, train_local
from cp.launch import launch
from cp.pipeline import run_stage
from cp.resources import LauncherSpec, SlurmSpec
from cp.scaling import HPs
from cp.slurm import queue_states, submit
from cp.spec import load_spec
from cp.study import Study
from cp.train import train
from tests.conftest import TINY, tiny_run
from tests.slurm_cluster import PARTITION

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]
REPO = Path(__file__).parent.parent

# What the local cluster offers: one CPU per job (2 jobs at once on 2 cores), no GPUs.
LOCAL = {"partition": PARTITION, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 1,
         "time_min": 10, "signal_delay_s": 60, "poll_s": 0.5}


def on_slurm(**stages) -> LauncherSpec:
    return LauncherSpec(kind="slurm", slurm=SlurmSpec(**LOCAL), stages=stages)


def quiet(line: str) -> None:
    pass


def events(study: Study, run_id: str) -> list[dict]:
    return read_events(study.run(run_id))


def job_of(study: Study, run_id: str) -> str:
    return [e for e in events(study, run_id) if e["event"] == "submitted"][-1]["job_id"]


def wait_for(condition, what: str, timeout: float = 120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def workdir(tmp_path):
    """A copy of the workflow, so the test's .snakemake and results stay out of the repo."""
    for name in ("Snakefile", "workflow", "profiles", "specs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    return tmp_path


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_sweep_through_profiles_slurm_equals_the_local_launcher(workdir):
    # profiles/slurm as shipped; the values a user edits for their cluster are given for this
    # one on the command line (Snakemake merges --config over the profile's study.yaml).
    this_cluster = {"launcher": {"slurm": {**LOCAL, "array_parallelism": 2},
                                 "stages": {"target": {"gpus_per_node": 0, "mem_gb": 1}}}}
    overrides = "overrides=" + yaml.safe_dump(this_cluster, default_flow_style=True).strip()
    sweep_table = "results/smoke/sweep/runs.parquet"
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--profile", "profiles/slurm",
                           "--config", "spec=specs/smoke.yaml", overrides, "--", sweep_table],
                          cwd=workdir, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted SLURM job array" in proc.stdout + proc.stderr
    on_cluster = pl.read_parquet(workdir / sweep_table)
    assert len(on_cluster) > 0 and set(on_cluster["status"]) == {"completed"}

    slurm_study = Study(workdir / "results" / "smoke")
    for run_id in on_cluster["run_id"].unique():  # each trained in a SLURM job, once
        kinds = [e["event"] for e in events(slurm_study, run_id)]
        assert kinds == ["submitted", "start", "finish"], kinds
        assert job_of(slurm_study, run_id).split("_")[0].isdigit()

    # The same stage with the local launcher, on as many threads per run (1), from scratch.
    spec = load_spec(workdir / "specs" / "smoke.yaml",
                     ["launcher.kind=local", "launcher.workers=2", "launcher.threads_per_run=1"])
    local = pl.DataFrame(run_stage("sweep", spec, Study(workdir / "local" / "smoke"),
                                   echo=quiet))
    got = dict(zip(on_cluster["run_id"], on_cluster["final_val_loss"], strict=True))
    want = dict(zip(local["run_id"], local["final_val_loss"], strict=True))
    assert got == want  # bit-identical: same code, seeds, data and threads


def _long_run(strategy: str = "ddp") -> PlannedRun:
    """200 steps, checkpointed every 25: long enough to be preempted mid-run."""
    cfg = tiny_run(scale=dataclasses.replace(TINY, tokens=8 * 32 * 200),
                   parallel=ParallelConfig(strategy=strategy))
    cfg.runtime.checkpoint_every = 25
    return PlannedRun(cfg, {"purpose": "preempted"})


def _uninterrupted(cfg, folder: Path, ranks: int = 1):
    """``cfg`` trained without interruption on ``ranks`` processes of one thread each (as the
    local cluster's jobs run)."""
    if ranks > 1:
        return train_local(cfg, folder, world=ranks, threads=1)
    before = torch.get_num_threads()
    try:
        return train(dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime,
                                                                          threads=1)))
    finally:
        torch.set_num_threads(before)


def _release(job_id: str) -> None:
    """A requeued job waits ~2 min (SLURM's BeginTime after a requeue); let it start now."""
    states = queue_states() or {}
    if states.get(job_id) == "PENDING":
        subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                       capture_output=True, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("how,tasks,strategy", [
    ("scontrol requeue", 1, "ddp"),   # what preemption with PreemptMode=REQUEUE does: SIGTERM
    ("time-limit signal", 1, "ddp"),  # submitit's signal, sent signal_delay_s before the limit
    ("time-limit signal", 2, "ddp"),  # the same for a data-parallel job (2 gloo ranks)
    ("time-limit signal", 2, "fsdp"),  # and for a sharded one (FSDP2, DCP checkpoints)
    ("scontrol requeue", 2, "fsdp"),
])
def test_a_preempted_job_finishes_from_its_checkpoint_with_the_uninterrupted_loss(
        tmp_path, how, tasks, strategy):
    study, run = Study(tmp_path), _long_run(strategy)
    launcher = on_slurm(target={"tasks_per_node": tasks})
    out: dict = {}
    waiter = threading.Thread(target=lambda: out.update(
        launch([run], study, launcher, "target", echo=quiet)))
    waiter.start()
    folder = study.run(run.run_id)
    wait_for(lambda: folder.checkpoint.exists() or folder.sharded_steps(),
             "the run's first checkpoint")
    job = job_of(study, run.run_id)
    if how == "scontrol requeue":
        subprocess.run(["scontrol", "requeue", job], check=True)
    else:  # exactly what SLURM sends at --signal=USR2@signal_delay_s (submitit's time limit)
        subprocess.run(["scancel", "--signal=USR2", job], check=True)
    while waiter.is_alive():
        _release(job)
        waiter.join(0.5)

    result = out[run.run_id]
    kinds = [e["event"] for e in events(study, run.run_id)]
    assert kinds == ["submitted", "start", "finish", "start", "resumed", "finish"], kinds
    stopped, resumed = (e for e in events(study, run.run_id)
                        if e["event"] in ("resumed",) or e.get("status") == "stopped")
    assert 25 <= stopped["step"] < result.total_steps   # stopped mid-run, at a checkpoint
    assert resumed["step"] == stopped["step"]          # and resumed from that checkpoint
    assert result.status == "completed" and result.steps == result.total_steps

    # The reference is an uninterrupted run on as many ranks. With two ranks each gradient
    # element is a + b, whatever the order, so the data-parallel run is deterministic and a
    # resume must reproduce it bit for bit. (Against a single process it would differ: the
    # ranks' partial sums round differently, and 200 steps amplify that into seed-like
    # noise -- tests/test_distributed.py judges that comparison against seed noise.)
    reference = _uninterrupted(run.config, tmp_path / "reference", tasks)
    assert result.final_val_loss == reference.final_val_loss
    assert result.eval_curve == reference.eval_curve
    assert result.train_curve == reference.train_curve


def test_a_failed_job_is_recorded_with_its_stderr_and_the_others_complete(tmp_path):
    study = Study(tmp_path)
    runs = [PlannedRun(tiny_run(hps=HPs(lr=lr)), {"lr": lr}) for lr in (0.003, 0.01, 0.03)]
    # The first job of the array dies before Python starts (a broken node, a bad module load).
    die = ('if [ "$SLURM_ARRAY_TASK_ID" = 0 ]; then echo "injected job failure" >&2; '
           "exit 3; fi")
    results = launch(runs, study, on_slurm(sweep={"setup": [die]}), "sweep", echo=quiet)
    failed = results[runs[0].run_id]
    assert failed.status == "failed"
    assert "SLURM job" in failed.reason and "injected job failure" in failed.reason
    assert study.run(runs[0].run_id).load_result().status == "failed"  # on disk
    assert all(results[r.run_id].ok for r in runs[1:])


def test_the_job_script_carries_the_profiles_resources_per_stage(tmp_path):
    study = Study(tmp_path)
    runs = [PlannedRun(tiny_run(hps=HPs(lr=lr)), {"lr": lr}) for lr in (0.003, 0.01)]
    launcher = on_slurm(target={"cpus_per_task": 2, "time_min": 7, "array_parallelism": 1,
                                "mem_gb": 1.5, "sbatch": {"comment": "cp-test"},
                                "setup": ["export CP_TEST_SETUP=1"]})
    jobs = submit(runs, study, launcher, "target", quiet)
    subprocess.run(["scancel", *(j.job_id for j in jobs)], check=True)
    array = jobs[0].job_id.split("_")[0]
    script = (tmp_path / "slurm" / array / f"{array}_submission.sh").read_text()
    for flag in (f"--partition={PARTITION}", "--cpus-per-task=2", "--time=7", "--mem=1536M",
                 "--array=0-1%1", "--comment=cp-test", "--signal=USR2@60",
                 "--job-name=cp-" + study.name + "-target", "export CP_TEST_SETUP=1"):
        assert flag in script, (flag, script)
    sweep_script = submit(runs[:1], Study(tmp_path / "other"), launcher, "sweep", quiet)
    subprocess.run(["scancel", sweep_script[0].job_id], check=True)
    other = (tmp_path / "other" / "slurm" / sweep_script[0].job_id /
             f"{sweep_script[0].job_id}_submission.sh").read_text()
    assert "--cpus-per-task=1" in other and "--time=10" in other  # the stage's own


def test_a_restarted_stage_waits_for_its_queued_jobs_instead_of_submitting_again(tmp_path):
    study = Study(tmp_path)
    runs = [PlannedRun(tiny_run(hps=HPs(lr=lr)), {"lr": lr}) for lr in (0.003, 0.01)]
    launcher = on_slurm()
    submit(runs, study, launcher, "sweep", quiet)   # ... and the stage process was killed
    lines: list[str] = []
    results = launch(runs, study, launcher, "sweep", echo=lines.append)
    assert all(r.ok for r in results.values())
    assert any("still queued from an earlier session" in line for line in lines)
    for r in runs:  # one job each, trained once
        kinds = [e["event"] for e in events(study, r.run_id)]
        assert kinds == ["submitted", "start", "finish"], kinds


def test_a_stage_stopped_while_waiting_cancels_its_jobs(tmp_path):
    study = Study(tmp_path)
    run = _long_run()
    script = (  # a stage process, waiting for its job
        "import sys, pickle; from pathlib import Path\n"
        "from cp.launch import launch; from cp.study import Study\n"
        "run, launcher = pickle.loads(sys.stdin.buffer.read())\n"
        f"launch([run], Study(Path({str(tmp_path)!r})), launcher, 'target')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    proc.stdin.write(pickle.dumps((run, on_slurm())))
    proc.stdin.close()
    wait_for(lambda: any(e["event"] == "submitted" for e in events(study, run.run_id)),
             "the submission")
    job = job_of(study, run.run_id)
    os.kill(proc.pid, signal.SIGTERM)  # what snakemake does to its jobs when it is stopped
    proc.wait(timeout=60)
    output = proc.stdout.read().decode()
    assert proc.returncode != 0
    assert "cancelled 1 SLURM job" in output, output
    wait_for(lambda: (queue_states() or {}).get(job, "gone") in ("CANCELLED", "gone"),
             "the job to be cancelled", timeout=60)
    assert study.run(run.run_id).load_result() is None  # nothing recorded: not a failure


def test_a_partition_slurm_refuses_stops_the_stage_with_sbatchs_reason(tmp_path):
    study = Study(tmp_path)
    run = PlannedRun(tiny_run(), {})
    launcher = LauncherSpec(kind="slurm", slurm=SlurmSpec(**{**LOCAL, "partition": "gpu"}))
    with pytest.raises(LaunchError) as err:
        launch([run], study, launcher, "sweep", echo=quiet)
    message = str(err.value)
    assert "invalid partition" in message.lower() and "launcher.slurm" in message
    assert study.run(run.run_id).load_result() is None  # a setting to fix, not a result
