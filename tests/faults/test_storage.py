"""A full disk and a read-only study folder (small tmpfs file systems: CI runs as root): the
stage stops with the file and what to do, no traceback, no temp file left behind, its record
says failed, no run is recorded as failed for it; once there is room (or the folder is
writable) the same command finishes the study with the uninterrupted study's numbers."""

import json
import shutil

import pytest

from tests.faults.helpers import (
    assert_kept,
    assert_no_traceback,
    assert_same_numbers,
    assert_trained_once,
    cpt,
    finish,
    leftovers,
    pipeline,
    remount,
    results_now,
    tmpfs,
    wait_for,
    workflow,
)


def fill(path):
    """Write to ``path`` until the file system is full. Unbuffered: a buffered file keeps the
    bytes a failed flush could not write and raises ENOSPC again when it closes."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def target_runs(study):
    return sorted({rid for e in json.loads((study / "transfer" / "done.json").read_text())
                   for rid in e["runs"]})


@pytest.mark.slow
def test_a_full_disk_stops_the_stage_and_the_study_resumes_once_there_is_room(reference,
                                                                              tmp_path):
    work = workflow(tmp_path / "work")
    with tmpfs(tmp_path / "disk", "32m") as disk:
        study = disk / "smoke"
        shutil.copytree(reference.study, study)
        for name in ("target", "report"):  # the target stage has yet to run
            shutil.rmtree(study / name)
        for rid in target_runs(study):
            shutil.rmtree(study / "runs" / rid)
        before = results_now(study)
        filler = disk / "filler"
        log = tmp_path / "pipeline.log"
        proc = pipeline(work, results=disk, log=log)
        wait_for(lambda: any((study / "runs" / rid / "events.jsonl").exists()
                             for rid in target_runs(study)), "a target run started", proc,
                 log=log)
        fill(filler)  # the disk fills up while the target trains
        rc, _ = finish(proc)
        out = log.read_text()
        assert rc != 0, out[-4000:]
        assert "No space left on device" in out and f"cannot write {study}" in out
        assert "Free space" in out and "run the same command again" in out
        assert_no_traceback(out)
        assert not leftovers(study), leftovers(study)
        record = json.loads((study / "target" / "stage.json").read_text())
        assert record["status"] == "failed" and "No space left" in record["error"]
        for rid in target_runs(study):  # the disk's fault is not the run's result
            result = study / "runs" / rid / "result.json"
            assert not result.exists() or json.loads(result.read_text())["status"] != "failed"
        filler.unlink()  # room again: the same command
        rc, _ = finish(pipeline(work, results=disk, log=log))
        assert rc == 0, log.read_text()[-4000:]
        assert_kept(study, before)
        assert_same_numbers(study, reference.study)


@pytest.mark.slow
def test_a_read_only_study_folder_is_refused_with_the_file_and_resumes_once_writable(
        reference, tmp_path):
    work = workflow(tmp_path / "work")
    with tmpfs(tmp_path / "disk", "32m") as disk:
        study = disk / "smoke"
        shutil.copytree(reference.study, study)
        shutil.rmtree(study / "report")  # the report has yet to be built
        before = results_now(study)
        remount(disk, "ro")
        rc, out = finish(pipeline(work, results=disk))
        assert rc != 0
        assert f"cannot write {study}" in out and "Read-only file system" in out
        assert_no_traceback(out)
        lone = cpt("stage", "report", work / "specs" / "smoke.yaml", "--results", disk,
                   cwd=work)
        assert lone.returncode == 1 and "Read-only file system" in lone.stderr
        assert f"cannot write {study}" in lone.stderr
        assert_no_traceback(lone.stderr)
        remount(disk, "rw")
        rc, out = finish(pipeline(work, results=disk))
        assert rc == 0, out[-4000:]
        assert not leftovers(study)
        assert_kept(study, before)
        assert_trained_once(study)
        assert_same_numbers(study, reference.study)
