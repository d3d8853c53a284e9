"""SIGKILL of the whole pipeline at random moments, once in every stage, each time resumed as
the README says (``--unlock``, then the same command): nothing finished is lost or trained
twice, and the study ends with the numbers of an uninterrupted one."""

import time

import pytest

from cp.stages import NAMES
from tests.faults.helpers import (
    assert_kept,
    assert_no_traceback,
    assert_same_numbers,
    assert_trained_once,
    fault_rng,
    finish,
    kill,
    pipeline,
    record,
    results_now,
    unlock,
    wait_for,
    workflow,
)

#: Seconds after a stage starts within which it is killed, at random (a short stage may end
#: first: the kill then lands in the next one).
KILL_WITHIN_S = 6.0


@pytest.mark.slow
def test_sigkill_in_every_stage_resumes_to_the_uninterrupted_study(reference, tmp_path,
                                                                   request):
    rng = fault_rng(request)
    work = workflow(tmp_path / "work")
    study = work / "results" / "smoke"
    log = tmp_path / "pipeline.log"
    before: dict = {}
    killed = []
    for stage in NAMES:
        if (study / "report" / "report.md").exists():
            break
        restarted = time.time()
        proc = pipeline(work, log=log)
        wait_for(lambda s=stage, t=restarted: (record(study, s).get("started") or 0) >= t - 1
                 or record(study, s).get("status") == "done", f"stage {stage}", proc, log=log)
        time.sleep(rng.uniform(0, KILL_WITHIN_S))
        before.update(results_now(study))
        kill(proc)
        killed.append((stage, {s: record(study, s).get("status") for s in NAMES}))
        unlock(work)
    proc = pipeline(work, log=log)
    rc, _ = finish(proc, 1800)
    out = log.read_text()
    assert rc == 0, out[-4000:]
    print("killed in:", [k for k, _ in killed])
    assert len(killed) >= 5  # most stages were killed in (a short one may have ended first)
    assert "taking over a stale lock" in out  # each kill left the study's lock behind
    assert_no_traceback(out)
    assert_kept(study, before)
    assert_trained_once(study)
    assert_same_numbers(study, reference.study)
