"""The study folder, the source of truth of a study. Every path lives here.

    results/<study>/
      spec.yaml                      the spec as resolved (defaults filled in)
      runs/<run id>/                 config.json, result.json, events.jsonl (checkpoint.pt)
      check/                         coord_check.png, coord_fits.csv, verdict.json
      sweep/runs.parquet             one row per sweep point (tags + final loss)
      select/global.json             the global optimum per parameterisation
      search/                        state.json, trials.parquet, runs.parquet, best.json,
                                     best_so_far.png
      transfer/<target>/<arm>/       settings.json (cpt describe --json), runs.json
      target/runs.parquet            one row per (target, arm, seed)
      report/                        report.md, report.html, summary.json, figures
      <stage>/stage.json             who ran the stage, with which commit, when (provenance)
      mlflow.db, mlartifacts/        the embedded MLflow store (a view; `cpt sync` rebuilds it)

Writes are atomic (temp file, then rename), so a killed stage never leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import write_json_atomic


@dataclass(frozen=True)
class Study:
    root: Path

    @classmethod
    def at(cls, results: str | Path, name: str) -> Study:
        return cls(Path(results) / name)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def spec_file(self) -> Path:
        return self.root / "spec.yaml"

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    @property
    def check_dir(self) -> Path:
        return self.root / "check"

    @property
    def check_verdict(self) -> Path:
        return self.check_dir / "verdict.json"

    @property
    def sweep_table(self) -> Path:
        return self.root / "sweep" / "runs.parquet"

    @property
    def select_file(self) -> Path:
        return self.root / "select" / "global.json"

    @property
    def search_dir(self) -> Path:
        return self.root / "search"

    @property
    def search_best(self) -> Path:
        return self.search_dir / "best.json"

    def transfer_dir(self, target: str, arm: str) -> Path:
        return self.root / "transfer" / target / arm

    @property
    def transfer_done(self) -> Path:
        return self.root / "transfer" / "done.json"

    @property
    def target_table(self) -> Path:
        return self.root / "target" / "runs.parquet"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_file(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def search_table(self) -> Path:
        """One row per search run (explored trials and re-evaluations), with its tags."""
        return self.search_dir / "runs.parquet"

    def stage_dir(self, stage: str) -> Path:
        """The folder of a stage's outputs (each stage's folder is named after it)."""
        return self.root / stage

    def stage_output(self, stage: str) -> Path:
        """The file whose existence says the stage has finished (Snakemake's rule output)."""
        return {"check": self.check_verdict, "sweep": self.sweep_table,
                "select": self.select_file, "search": self.search_best,
                "transfer": self.transfer_done, "target": self.target_table,
                "report": self.report_file}[stage]


def read_spec(study: Study):
    """The study's resolved spec (``spec.yaml``, written by every stage), without the checks
    that need the original machine (the corpus file may not exist where the folder is read)."""
    from omegaconf import OmegaConf

    from .spec import Spec

    if not study.spec_file.exists():
        raise FileNotFoundError(f"{study.spec_file} not found: is {study.root} a study folder "
                                "(results/<study>)?")
    merged = OmegaConf.merge(OmegaConf.structured(Spec), OmegaConf.load(study.spec_file))
    return OmegaConf.to_object(merged)


def write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: Path, rows: list[dict]) -> None:
    """A polars table of ``rows`` written atomically."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(tmp)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
