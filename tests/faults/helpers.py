"""What the fault suite shares: a copy of the workflow, the pipeline run and killed as a user
or a cluster would, the checks every fault test makes (nothing finished lost or trained twice,
the message names the file, the numbers equal an uninterrupted study's) and small
file systems (tmpfs: full, read-only)."""

import contextlib
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cp.study import RunFolder
from tests.study_helpers import REPO, copy_workflow

PIPELINE = [sys.executable, "-m", "snakemake", "--profile", "profiles/local", "--config",
            "spec=specs/smoke.yaml"]


def fault_rng(request) -> random.Random:
    """A random generator whose seed is printed (and shown on failure): CP_FAULT_SEED=<seed>
    replays a failed run's moments."""
    seed = int(os.environ.get("CP_FAULT_SEED") or random.SystemRandom().randrange(10**6))
    print(f"\n{request.node.name}: fault seed {seed} (replay with CP_FAULT_SEED={seed})")
    request.node.user_properties.append(("fault seed", seed))
    return random.Random(seed)


def workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    return copy_workflow(dest)


def pipeline(workdir: Path, *extra: str, results: Path | None = None, log: Path | None = None,
             env: dict | None = None) -> subprocess.Popen:
    """``snakemake`` on the smoke study in ``workdir``, in a process group of its own (so a
    kill takes the stages and their workers with it), output to ``log``."""
    cmd = list(PIPELINE)
    if results is not None:
        cmd.append(f"results={results}")
    cmd += list(extra)
    out = open(log, "a") if log is not None else subprocess.PIPE  # noqa: SIM115
    env = {**(env or os.environ)}
    env.pop("CP_STUDY_LOCK", None)
    return subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out or ""


def unlock(workdir: Path, results: Path | None = None) -> None:
    """Snakemake's own lock (in its working directory) outlives a SIGKILL."""
    cmd = [*PIPELINE, *([f"results={results}"] if results else []), "--unlock"]
    subprocess.run(cmd, cwd=workdir, check=True, capture_output=True)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL the pipeline, its stage and the stage's workers at once."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def cpt(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "CP_STUDY_LOCK"}
    return subprocess.run([sys.executable, "-m", "cp.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env)


def wait_for(condition, what: str, proc: subprocess.Popen | None = None,
             timeout: float = 600, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            text = log.read_text()[-4000:] if log else ""
            pytest.fail(f"the pipeline ended before {what}:\n{text}")
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def record(study: Path, stage: str) -> dict:
    try:
        return json.loads((study / stage / "stage.json").read_text())
    except (OSError, ValueError):
        return {}


# ---------------------------------------------------------------------------------------------
# What every fault test asserts.


def results_now(study: Path) -> dict[str, tuple[int, bytes]]:
    """Every run's result as it is now: run id -> (mtime, bytes)."""
    out = {}
    for p in (study / "runs").glob("*/result.json"):
        with contextlib.suppress(OSError):
            out[p.parent.name] = (p.stat().st_mtime_ns, p.read_bytes())
    return out


def events(study: Path, run_id: str) -> list[dict]:
    return RunFolder(study / "runs" / run_id, run_id).read_events()


def assert_kept(study: Path, before: dict[str, tuple[int, bytes]], except_: set = frozenset()):
    """Nothing finished is lost: every result seen before the fault is there, unchanged (and
    so was not trained again)."""
    for run_id, (mtime, data) in before.items():
        if run_id in except_:
            continue
        path = study / "runs" / run_id / "result.json"
        assert path.exists(), f"finished run {run_id} lost its result"
        assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime, \
            f"finished run {run_id} was trained again"


def assert_trained_once(study: Path, again: set = frozenset()):
    """No run finished twice (its event log), but those in ``again`` (their results were set
    aside: trained once more)."""
    for d in (study / "runs").iterdir():
        ends = [e for e in events(study, d.name)
                if e["event"] == "finish" and e.get("status") != "stopped"]
        expected = 2 if d.name in again else 1
        assert len(ends) == expected, f"run {d.name} finished {len(ends)} times"


def compare_studies():
    spec = importlib.util.spec_from_file_location("compare_studies",
                                                  REPO / "scripts" / "compare_studies.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.compare


def assert_same_numbers(study: Path, reference: Path):
    """The final numbers equal an uninterrupted study's (scripts/compare_studies.py)."""
    diffs = compare_studies()(study, reference)
    assert not diffs, "\n".join(diffs)


def assert_no_traceback(text: str):
    assert "Traceback" not in text, text[-4000:]


def leftovers(study: Path) -> list[Path]:
    """Temp files a failed write left behind."""
    return [p for p in study.rglob(".*.tmp")]


# ---------------------------------------------------------------------------------------------
# Small file systems (CI runs as root; elsewhere these tests skip, saying why).


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"FAULT TEST NOT RUN -- cannot mount a tmpfs here (needs root): "
                    f"{done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True,
                   capture_output=True)
