"""``cpt sync``: a study folder logged into an MLflow store, only what is missing or outdated,
so syncing twice adds nothing. Reads nothing but the study folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ..stages import STAGES, Stage
from ..stages import get as get_stage
from ..stages.base import RESULT_COLUMNS, read_record, read_runs_table
from ..study import Study
from .params import fmt_value
from .store import OUTPUTS, STAGE_STATUS, Store, tracking_uri


def stage_runs(study: Study, stage: str) -> list[tuple[str, dict[str, Any]]]:
    """(run id, tags) of every training run of a finished stage, from its runs table (none for
    a stage that trains no runs).

    A run the stage planned several times (the base grid of every parameterisation, which
    resolve alike at the base scale; a per-module arm whose factors are all 1) was trained
    once and is logged once, with the tags of its first row, as the launcher ran it; its
    other roles go into an ``also`` tag (``parameterisation=sp; arm=per_module``).
    """

    table = study.stage_table(stage)
    if not get_stage(stage).trains or not table.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    also: dict[str, list[str]] = {}
    for row in read_runs_table(study, stage).to_dicts():
        run_id = row.get("run_id")
        if not run_id:
            continue
        tags = {k: v for k, v in row.items() if k not in RESULT_COLUMNS and v is not None}
        if run_id not in out:
            out[run_id] = tags
            continue
        first = out[run_id]
        role = " ".join(f"{k}={fmt_value(v)}" for k, v in tags.items() if first.get(k) != v)
        if role and role not in also.setdefault(run_id, []):
            also[run_id].append(role)
    for run_id, roles in also.items():
        if roles:
            out[run_id] = {**out[run_id], "also": "; ".join(roles)}
    return list(out.items())


@dataclass
class SyncReport:
    uri: str
    experiment: str
    stages: list[str] = field(default_factory=list)
    logged: int = 0
    """Training runs logged now."""
    present: int = 0
    """Training runs that were already there."""
    replaced: int = 0
    """Incomplete or outdated training runs logged again."""
    outputs: int = 0
    """Stages whose outputs were (re-)logged."""


def sync(study: Study, tracking: Any, study_name: str, uri: Optional[str] = None,
         stages: Sequence[Stage] = STAGES, echo: Callable[[str], None] = print,
         hidden: Optional[dict[str, str]] = None) -> SyncReport:
    """Log the study folder into the store: every finished stage as a parent, every training
    run of its table as a child, its outputs; only what is missing or outdated. ``tracking``
    is the study's tracking section (its uri and experiment). Reads nothing but the study
    folder. Errors (a store that is down) raise; a corrupt file raises `CorruptFile`.
    ``hidden``: run settings read from the environment (`Store`)."""
    uri = tracking_uri(study, uri or tracking.uri)
    experiment = tracking.experiment or study_name
    store = Store(uri, experiment, study, hidden)
    report = SyncReport(uri, experiment)
    for st in stages:
        stage = st.name
        record = read_record(study, stage)
        if not st.done(study).exists() and record is None:
            continue
        report.stages.append(stage)
        parent = store.parent(stage, record)
        children = store.children(parent)
        runs = stage_runs(study, stage)
        before = report.logged + report.replaced
        for run_id, tags in runs:
            result = study.run(run_id).read_result()
            if result is None:
                continue
            old = children.get(run_id)
            if old is not None:
                if store.is_current(old, result.to_dict()):
                    report.present += 1
                    if old.data.tags.get("also") != tags.get("also") and "also" in tags:
                        store.set_tags(old.info.run_id, {"also": tags["also"]})
                    continue
                store.delete(old.info.run_id)
                report.replaced += 1
            else:
                report.logged += 1
            store.log_child(parent, stage, run_id, tags, record=record)
        outputs = st.outputs(study)
        tags = store.client.get_run(parent).data.tags
        if tags.get(OUTPUTS) != outputs.fingerprint():
            store.log_outputs(parent, outputs)
            report.outputs += 1
        status = (record or {}).get("status", "done")
        if status != "running":  # a stage running right now sets its own status when done
            store.set_status(parent, STAGE_STATUS.get(status, "FINISHED"),
                             (record or {}).get("finished"))
        echo(f"[sync] {stage}: {len(runs)} training run(s), "
             f"{report.logged + report.replaced - before} logged now")
    return report
