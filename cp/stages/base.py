"""What a stage is and what it is given.

A stage is one `Stage` value in its own module (``cp/stages/<name>.py``), listed in DAG order
by the registry (`cp.stages.STAGES`). Everything about it lives in that module: the spec
section it reads (a dataclass with its own ``check``), the runs it plans, how it runs them,
the files it writes (named by `cp.study.Study`), what its MLflow parent run shows, and its
section of the report with the verdicts it can make.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..config import PlannedRun, RunResult
from ..doc import Doc, Findings
from ..execute import ResultHook
from ..study import CorruptFile, Study, read_json, read_table, set_aside, write_parquet

if TYPE_CHECKING:  # the spec composes the stages' sections, so it sits above them
    import polars as pl

    from ..spec import Spec

Echo = Callable[[str], None]


@dataclass(frozen=True)
class SeedUse:
    """A seed a stage's runs use: its ``stream`` (choose or judge) and the spec key it comes
    from (for messages)."""

    stream: str
    seed: int
    key: str


class StageFailed(Exception):
    """A stage that cannot succeed (e.g. the coordinate check failed): stops the study."""


@dataclass
class Context:
    """What a stage runs with."""

    spec: Spec
    study: Study
    stages: tuple[Stage, ...] = ()
    """The registry, in DAG order (the report stage reads every stage's section)."""
    on_result: Optional[ResultHook] = None
    """Called with each training run's result as it comes in (tracking, tests)."""
    echo: Echo = print


@dataclass
class ReportContext:
    """What a stage's report section writes into."""

    spec: Spec
    study: Study
    doc: Doc
    found: Findings
    notes: dict[str, Any] = field(default_factory=dict)
    """What an earlier section leaves for a later one (the sweep's suboptimality rows, which
    the target section looks up when a sweep covered a target's own scale)."""


@dataclass
class StagePlan:
    """What a stage will train: ``cpt plan``'s row."""

    stage: str
    runs: int
    tokens: int
    note: str = ""


@dataclass
class Outputs:
    """What a stage's MLflow parent run shows: its files and their headline numbers."""

    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    files: list[tuple[Path, Optional[str]]] = field(default_factory=list)
    """(local file or folder, artifact path)."""

    def add(self, path: Path, dest: Optional[str]) -> None:
        if path.exists():
            self.files.append((path, dest))

    def fingerprint(self) -> str:
        """A hash of the files' contents and the metrics: sync re-logs a stage whose outputs
        changed since they were logged (a re-run, a rebuilt report)."""
        h = hashlib.sha256(json.dumps(sorted(self.metrics)).encode())
        for path, dest in self.files:
            for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if f.is_file():
                    h.update(f"{dest}/{f.relative_to(path.parent)}".encode())
                    h.update(f.read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True)
class Stage:
    """One stage of a study."""

    name: str
    summary: str
    """What it does, in a line (``cpt plan``, docs)."""
    after: tuple[str, ...]
    """Stages whose outputs it reads (Snakemake's inputs)."""
    run: Callable[[Context], Any]
    done: Callable[[Study], Path]
    """The file whose existence says the stage has finished (Snakemake's output)."""
    plan: Callable[[Spec], StagePlan]
    outputs: Callable[[Study], Outputs]
    """Its files and numbers for MLflow (whatever of them exists)."""
    report: Optional[Callable[[ReportContext], None]] = None
    """Its section of the report (None: it has none)."""
    trains: bool = False
    """Its runs go through the launcher: it has a runs table (`Study.stage_table`) and may
    have its own SLURM resources (``launcher.stages``)."""
    seeds: Optional[Callable[[Spec], list[SeedUse]]] = None
    """The seeds its runs use and what for: choosing (selecting an optimum or a search's
    next point) or judging (measuring what was chosen). The spec refuses a seed that does
    both, anywhere in the study."""


def result_row(pr: PlannedRun, result: RunResult) -> dict:
    """A row of a stage's runs table: the planned run's tags, its scale and its outcome."""
    sc = pr.config.scale
    return {**pr.tags, "run_id": pr.run_id, "width": sc.width, "depth": sc.depth,
            "batch": sc.batch, "tokens": sc.tokens, "seq_len": sc.seq_len,
            "status": result.status, "diverged": result.diverged,
            "final_val_loss": result.final_val_loss, "loss": result.loss_or_inf(),
            "steps": result.steps, "tokens_per_s": result.tokens_per_s,
            "wall_s": result.wall_s, "n_params": result.n_params}


#: Columns of a stage's runs table that are results, not the planned run's tags, with their
#: types (a table without rows still has them).
RESULT_SCHEMA: dict[str, type] = {
    "run_id": str, "width": int, "depth": int, "batch": int, "tokens": int, "seq_len": int,
    "status": str, "diverged": bool, "final_val_loss": float, "loss": float, "steps": int,
    "tokens_per_s": float, "wall_s": float, "n_params": int}
RESULT_COLUMNS = frozenset(RESULT_SCHEMA)


def write_runs_table(study: Study, stage: str, rows: list[dict]) -> None:
    """A training stage's runs table (`result_row` rows); with no rows, still its columns."""
    write_parquet(study.stage_table(stage), rows, schema=RESULT_SCHEMA)


def read_runs_table(study: Study, stage: str) -> pl.DataFrame:
    """A training stage's runs table, checked (`CorruptFile` if it is not one)."""
    return read_table(study.stage_table(stage), RESULT_SCHEMA)


def base_outputs(study: Study, stage: str) -> Outputs:
    """What every stage's parent run shows: the study's spec and the stage's record."""
    out = Outputs()
    out.add(study.spec_file, None)
    out.add(study.stage_record(stage), stage)
    return out


def table_outputs(study: Study, stage: str) -> Outputs:
    """A training stage's runs table and its run counts by status."""
    import polars as pl

    out = base_outputs(study, stage)
    table = study.stage_table(stage)
    out.add(table, stage)
    if table.exists():
        df = read_runs_table(study, stage).unique("run_id")
        out.metrics.append(("runs", float(len(df)), 0))
        for status in ("completed", "diverged", "failed"):
            out.metrics.append((f"runs_{status}",
                                float(df.filter(pl.col("status") == status).height), 0))
    return out


def read_if_exists(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def read_selected(study: Study, tables: Sequence[str] = ()) -> dict[str, dict]:
    """The select stage's optima (``select/global.json``), checked: each an object with its
    ``values``, one for each of ``tables``. `CorruptFile` otherwise."""
    path = study.select_file
    selected = read_json(path)
    if not isinstance(selected, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("values"), dict) for v in selected.values()):
        raise CorruptFile(path, "expected an object of {table: {values: {...}, ...}}")
    missing = [t for t in tables if t not in selected]
    if missing:
        raise CorruptFile(path, f"no optimum for {', '.join(missing)}")
    return selected


def read_record(study: Study, stage: str) -> Optional[dict]:
    """A stage's provenance record (None if it has none). A record is only a record: a corrupt
    one is set aside and counts as none (the stage writes a new one when it next runs)."""
    path = study.stage_record(stage)
    if not path.exists():
        return None
    try:
        return read_json(path, "stage", "status")
    except CorruptFile as e:
        set_aside(path, e.reason, "the stage writes a new one when it runs")
        return None
