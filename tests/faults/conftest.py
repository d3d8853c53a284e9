"""The fault suite's reference: the smoke study, uninterrupted, through Snakemake. While it
runs, a second pipeline from another checkout is started on the same results folder (and
must be refused): that test's record is kept here, and the study is every other fault test's
reference."""

import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.helpers import finish, pipeline, record, wait_for, workflow


@dataclass
class Reference:
    study: Path
    results: Path
    first: Path
    second: Path
    first_pid: int
    first_rc: int
    first_out: str
    second_rc: int
    second_out: str
    second_s: float


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults-reference")
    first, second = workflow(root / "clone1"), workflow(root / "clone2")
    results = root / "results"
    study = results / "smoke"
    log = root / "first.log"
    proc = pipeline(first, results=results, log=log)
    wait_for(lambda: record(study, "sweep").get("status") == "running",
             "the sweep started", proc, log=log)
    t0 = time.time()
    other = pipeline(second, results=results)
    second_rc, second_out = finish(other, 600)
    second_s = time.time() - t0
    first_rc, _ = finish(proc, 1800)
    return Reference(study, results, first, second, proc.pid, first_rc, log.read_text(),
                     second_rc, second_out, second_s)
