"""A stage run as the pipeline runs it: the study's spec kept in its folder, the stage's
provenance record (`cp.provenance`), and the stage and its training runs logged to MLflow as
the spec's ``tracking`` section says (which never fails the stage). ``cpt stage`` (what each
Snakemake rule calls), ``cpt coord-check`` and the tests all go through `run_stage`.

A file the stage reads that turns out corrupt (`cp.study.CorruptFile`) is set aside and redone
here: a file of an earlier stage by running that stage again (its runs are cached, so it only
retrains what is missing and rewrites its files), a run's file by running the stage whose
table lists the run (which trains it again), the stage's own file by starting it again. Then
the stage runs again. The same file found corrupt twice stops the stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .config import PlannedRun, RunResult
from .execute import ResultHook
from .launch import warm_workers
from .provenance import stage_record
from .spec import Spec
from .stages import NAMES, STAGES, Context, StageFailed, StagePlan, get
from .stages.base import read_runs_table
from .study import CorruptFile, Study, set_aside, write_json, write_record
from .tracking import stage_tracker


def run_stage(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
              echo: Callable[[str], None] = print) -> Any:
    """Run stage ``name`` of ``spec`` in ``study``; returns what the stage returns. Raises
    `StageFailed` when the stage cannot succeed (the study stops there), `StorageError` when
    the study folder cannot be written. Corrupt files are set aside and redone (above)."""
    redone: set[Path] = set()
    while True:
        try:
            return _run_once(name, spec, study, on_result, echo)
        except CorruptFile as e:
            if e.path in redone:
                raise StageFailed(f"{e}, again after it was set aside and redone; look at the "
                                  "file (and the disk it is on)") from None
            redone.add(e.path)
            owner = owner_of(study, e.path, name)
            set_aside(e.path, e.reason, f"redoing stage {owner}" if owner != name
                      else f"stage {name} starts again")
            if owner != name:
                run_stage(owner, spec, study, on_result, echo)


def owner_of(study: Study, path: Path, current: str) -> str:
    """The stage that writes ``path``: a stage's folder is its own; a run belongs to the first
    training stage whose table lists it (else to ``current``, which is training it)."""
    part, name = study.part_of(path)
    if part == "stage" and name in NAMES:
        return name
    if part == "run":
        for stage in STAGES:
            table = study.stage_table(stage.name)
            if not stage.trains or not table.exists() or stage.name == current:
                continue
            try:
                if name in read_runs_table(study, stage.name)["run_id"].to_list():
                    return stage.name
            except CorruptFile:
                continue  # that table is redone when its own reader finds it
    return current


def redo_hint(study: Study, path: Path) -> str:
    """What to run after ``path`` was found corrupt outside the pipeline (``cpt report``,
    ``cpt sync``)."""
    owner = owner_of(study, path, "report")
    return (f"Redo stage {owner} (and what follows): `snakemake ... --forcerun {owner}` in "
            f"the pipeline, or `cpt stage {owner} SPEC`; it redoes only what is missing. "
            "Then run this command again.")


def _run_once(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook],
              echo: Callable[[str], None]) -> Any:
    stage = get(name)
    if not stage.trains:
        return _run_stage(name, spec, study, on_result, echo)
    # The stage's workers start (and import torch) while it checks its models and plans.
    with warm_workers(spec.launcher, lambda: stage.plan(spec).runs):
        return _run_stage(name, spec, study, on_result, echo)


def _run_stage(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook],
               echo: Callable[[str], None]) -> Any:
    stage = get(name)
    if stage.trains or name == "check":  # builds models: a factory's must fit its roles
        spec.check_models()
    spec.save(study)
    record_file = study.stage_record(name)
    started = time.time()
    record = stage_record(name, "running", started)
    write_json(record_file, record)
    with stage_tracker(spec, study, name, record) as tracker:

        def hook(pr: PlannedRun, result: RunResult) -> None:
            tracker.on_result(pr, result)
            if on_result is not None:
                on_result(pr, result)

        try:
            out = stage.run(Context(spec, study, STAGES, hook, echo))
        except BaseException as e:
            record = stage_record(name, "failed", started, time.time(),
                                  f"{type(e).__name__}: {e}"[:2000])
            write_record(record_file, record)  # in place if the disk is full
            tracker.finish(record)
            raise
        record = stage_record(name, "done", started, time.time())
        write_json(record_file, record)
        tracker.finish(record)
    return out


def plan(spec: Spec) -> list[StagePlan]:
    """Run count and training tokens per stage (the search counts its budget)."""
    return [s.plan(spec) for s in STAGES]


__all__ = ["StageFailed", "owner_of", "plan", "redo_hint", "run_stage"]
