"""The study folder, the source of truth of a study. Every path lives here.

    results/<study>/
      spec.yaml                      the spec as resolved (defaults filled in)
      runs/<run id>/                 config.json, result.json, events.jsonl (checkpoint.pt)
      check/                         coord_check.png, coord_fits.csv, verdict.json
      sweep/runs.parquet             one row per sweep point (tags + final loss)
      select/global.json             the global optimum per parameterisation
      search/                        state.json, trials.parquet, best.json, best_so_far.png
      transfer/<target>/<arm>/       settings.json (cpt describe --json), runs.json
      target/runs.parquet            one row per (target, arm, seed)
      report/                        report.md and figures
      timings.jsonl                  start and end of every stage execution

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
    def timings_file(self) -> Path:
        """One line per stage execution: stage, start, end, status."""
        return self.root / "timings.jsonl"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_file(self) -> Path:
        return self.report_dir / "report.md"


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
