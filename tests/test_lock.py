"""The study lock: one pipeline or lone command at a time; its own stages join it; stale locks
are taken over and named; a live one refuses with who holds it."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cp import lock as lockmod
from cp.lock import ENV_TOKEN, StudyLock, StudyLocked, hold, hold_for_pipeline
from cp.study import Study


@pytest.fixture
def study(tmp_path):
    return Study(tmp_path / "study")


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(study, **fields):
    study.root.mkdir(parents=True, exist_ok=True)
    lock = {"token": "someone-else", "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": None, "what": "a snakemake pipeline", "since": time.time(),
            "cwd": "/elsewhere/clone2", "code": "/elsewhere/clone2", "heartbeat": time.time(),
            "members": [], **fields}
    study.lock_file.write_text(json.dumps(lock))


def test_a_second_holder_is_refused_with_who_holds_it(study):
    with StudyLock(study, "cpt stage sweep") as first:
        first.acquire()
        with pytest.raises(StudyLocked) as err:
            StudyLock(study, "a snakemake pipeline").acquire()
        text = str(err.value)
        for fragment in (str(study.root), "cpt stage sweep", f"pid {os.getpid()}",
                         socket.gethostname(), os.getcwd(), "Wait for it to finish"):
            assert fragment in text, (fragment, text)
    assert not study.lock_file.exists()  # released


def test_a_lock_whose_process_is_gone_is_taken_over_and_named(study, capsys):
    pid = dead_pid()
    write_lock(study, pid=pid)
    with hold(study, "cpt stage sweep"):
        assert json.loads(study.lock_file.read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert "stale lock" in err and f"pid {pid}" in err and "is gone" in err


def test_a_reused_pid_does_not_keep_a_lock_alive(study):
    write_lock(study, pid=os.getpid(), pid_start=1)  # our pid, but an older process's
    with hold(study, "cpt report"):
        pass


def test_another_hosts_lock_is_live_until_its_heartbeat_is_old(study, monkeypatch, capsys):
    write_lock(study, host="node-17", heartbeat=time.time() - 60)
    with pytest.raises(StudyLocked, match="node-17"), hold(study, "cpt stage sweep"):
        pass
    write_lock(study, host="node-17", heartbeat=time.time() - lockmod.STALE_AFTER_S - 60)
    with hold(study, "cpt stage sweep"):
        pass
    assert "no heartbeat from host node-17" in capsys.readouterr().err


def test_a_pipelines_stages_join_its_lock_and_others_are_refused(study, monkeypatch):
    monkeypatch.delenv(ENV_TOKEN, raising=False)
    pipeline = hold_for_pipeline(study, "snakemake pipeline of specs/smoke.yaml")
    try:
        token = os.environ[ENV_TOKEN]
        with hold(study, "cpt stage sweep"):  # inherits the token: joins
            lock = json.loads(study.lock_file.read_text())
            assert lock["token"] == token
            assert [m["what"] for m in lock["members"]] == ["cpt stage sweep"]
        assert json.loads(study.lock_file.read_text())["members"] == []
        monkeypatch.delenv(ENV_TOKEN)  # another pipeline, or a lone command
        with pytest.raises(StudyLocked, match=r"snakemake pipeline of specs/smoke\.yaml"), \
                hold(study, "cpt train proxy"):
            pass
    finally:
        pipeline.release()
        os.environ.pop(ENV_TOKEN, None)
    assert not study.lock_file.exists()


def test_a_live_member_keeps_a_dead_pipelines_lock(study):
    """Snakemake killed alone: its stage process still trains, so the study is still busy."""
    member = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": None,
              "what": "cpt stage target", "since": time.time()}
    write_lock(study, pid=dead_pid(), members=[member])
    with pytest.raises(StudyLocked, match="with cpt stage target"), \
            hold(study, "a snakemake pipeline"):
        pass


def test_the_heartbeat_refreshes_the_lock(study, monkeypatch):
    monkeypatch.setattr(lockmod, "HEARTBEAT_S", 0.05)
    with hold(study, "cpt stage search"):
        first = json.loads(study.lock_file.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(study.lock_file.read_text())["heartbeat"] > first


def test_cpt_stage_refuses_a_busy_study_without_a_traceback(study, tmp_path):
    from tests.study_helpers import SMOKE, cpt

    write_lock(Study(tmp_path / "results" / "smoke"), what="a snakemake pipeline",
               cwd="/home/me/clone2")
    env = {k: v for k, v in os.environ.items() if k != ENV_TOKEN}
    out = cpt("stage", "select", str(SMOKE), "--results", str(tmp_path / "results"), env=env)
    assert out.returncode == 2
    assert "in use by a snakemake pipeline" in out.stderr and "/home/me/clone2" in out.stderr
    assert "Traceback" not in out.stderr
