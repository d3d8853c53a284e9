"""Two pipelines from two checkouts on one results folder: the second is refused before it
trains anything, saying who holds the study; the first trains every run once."""

import socket

import pytest

from tests.faults.helpers import assert_no_traceback, assert_trained_once, events


@pytest.mark.slow
def test_a_second_pipeline_on_the_same_study_is_refused_with_who_holds_it(reference):
    r = reference
    assert r.first_rc == 0, r.first_out[-4000:]
    assert r.second_rc != 0, r.second_out[-4000:]
    for fragment in (f"{r.study} is in use by", "snakemake pipeline", f"pid {r.first_pid}",
                     socket.gethostname(), str(r.first)):
        assert fragment in r.second_out, (fragment, r.second_out[-3000:])
    assert "Traceback" not in r.second_out
    assert r.second_s < 120  # refused at once, not after training


@pytest.mark.slow
def test_the_first_pipeline_trains_every_run_once(reference):
    assert_no_traceback(reference.first_out)
    runs = list((reference.study / "runs").iterdir())
    assert len(runs) > 10
    for d in runs:
        kinds = [e["event"] for e in events(reference.study, d.name)]
        assert kinds == ["start", "finish"], (d.name, kinds)
        assert {e["pid"] for e in events(reference.study, d.name)}  # written by workers
    assert_trained_once(reference.study)
    assert not (reference.study / "lock.json").exists()  # released at the end
