"""The stages of a study, one module each, listed here in DAG order:

    check -> sweep -> select -> search -> transfer -> target -> report

Each module holds everything about its stage (see `cp.stages.base`); the CLI, the Snakemake
rules, the tracker and the report read this registry instead of knowing stages by name. A
stage module may import the modules of stages before it, never after.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import check, report, search, select, sweep, target, transfer
from .base import Context, Outputs, ReportContext, Stage, StageFailed, StagePlan

if TYPE_CHECKING:
    import polars as pl

    from ..study import Study

STAGES: tuple[Stage, ...] = (check.STAGE, sweep.STAGE, select.STAGE, search.STAGE,
                             transfer.STAGE, target.STAGE, report.STAGE)
NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
#: Stages whose runs go through the launcher (they have runs tables and SLURM resources).
TRAINING: tuple[str, ...] = tuple(s.name for s in STAGES if s.trains)


def get(name: str) -> Stage:
    """The stage called ``name``."""
    for s in STAGES:
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(NAMES)}")


def runs_table(study: Study) -> pl.DataFrame:
    """Every run of a study with its stage tags (see `cp.stages.report.runs_table`)."""
    return report.runs_table(study, STAGES)


__all__ = ["NAMES", "STAGES", "TRAINING", "Context", "Outputs", "ReportContext", "Stage",
           "StageFailed", "StagePlan", "get", "runs_table"]
