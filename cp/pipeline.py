"""A stage run as the pipeline runs it: the study's spec kept in its folder, the stage's
provenance record (`cp.provenance`), and the stage and its training runs logged to MLflow as
the spec's ``tracking`` section says (which never fails the stage). ``cpt stage`` (what each
Snakemake rule calls), ``cpt coord-check`` and the tests all go through `run_stage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

from .config import PlannedRun, RunResult
from .execute import ResultHook
from .provenance import stage_record
from .spec import Spec
from .stages import STAGES, Context, StageFailed, StagePlan, get
from .study import Study, write_json
from .tracking import stage_tracker


def run_stage(name: str, spec: Spec, study: Study, on_result: Optional[ResultHook] = None,
              echo: Callable[[str], None] = print) -> Any:
    """Run stage ``name`` of ``spec`` in ``study``; returns what the stage returns. Raises
    `StageFailed` when the stage cannot succeed (the study stops there)."""
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
            write_json(record_file, record)
            tracker.finish(record)
            raise
        record = stage_record(name, "done", started, time.time())
        write_json(record_file, record)
        tracker.finish(record)
    return out


def plan(spec: Spec) -> list[StagePlan]:
    """Run count and training tokens per stage (the search counts its budget)."""
    return [s.plan(spec) for s in STAGES]


__all__ = ["StageFailed", "plan", "run_stage"]
