"""The study folder, the source of truth of a study. Every path of a study is named here and
nowhere else.

    results/<study>/
      spec.yaml                      the spec as resolved (defaults filled in)
      runs/<run id>/                 config.json, result.json, events.jsonl (checkpoint.pt,
                                     or checkpoint.dcp/ for an FSDP run)
      check/                         coord_check.png, coord_fits.csv, coord_measurements.csv,
                                     verdict.json
      sweep/runs.parquet             one row per sweep point (tags + final loss)
      select/global.json             the global optimum per parameterisation
      search/                        state.json, trials.parquet, runs.parquet, best.json,
                                     best_so_far.png (optuna.journal for Optuna's samplers)
      transfer/<target>/<arm>/       settings.json (cpt describe --json), runs.json
      transfer/done.json             the index of the above
      target/runs.parquet            one row per (target, arm, seed)
      report/                        report.md, report.html, summary.json, runs.parquet,
                                     figures
      <stage>/stage.json             who ran the stage, with which commit, when (provenance)
      search_comparison.json         benchmarks/search_comparison.py's numbers, if run here
      slurm/<job id>/                SLURM job scripts and logs
      mlflow.db, mlartifacts/        the embedded MLflow store (a view; `cpt sync` rebuilds it)

Writes are atomic (temp file, then rename), so a killed stage never leaves half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import RunResult


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(path: Path, rows: list[dict]) -> None:
    """A polars table of ``rows`` written atomically."""
    import polars as pl

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pl.DataFrame(rows, infer_schema_length=None).write_parquet(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: what `cp.train.train` and the launchers read and write there."""

    path: Path

    @property
    def config(self) -> Path:
        """config.json: the run's id, config and resolved settings."""
        return self.path / "config.json"

    @property
    def result(self) -> Path:
        """result.json: the run's `RunResult` (a failed or diverged run has one too)."""
        return self.path / "result.json"

    @property
    def events(self) -> Path:
        """events.jsonl: one line per start, finish, resume, submission of an attempt."""
        return self.path / "events.jsonl"

    @property
    def checkpoint(self) -> Path:
        """checkpoint.pt: model, optimiser and loop state of an unfinished run."""
        return self.path / "checkpoint.pt"

    @property
    def sharded_checkpoint(self) -> Path:
        """checkpoint.dcp/: an FSDP run's checkpoints, one folder per step
        (`sharded_step`). Each is written by every rank with torch.distributed.checkpoint
        into a hidden temp folder and renamed once complete, so a checkpoint killed half-way
        is never loaded."""
        return self.path / "checkpoint.dcp"

    def sharded_step(self, step: int) -> Path:
        """``checkpoint.dcp/step-<step>/``: the tensors of the model and the AdamW state, in
        torch.distributed.checkpoint's format (.metadata and one file per rank), and
        `sharded_state`."""
        return self.sharded_checkpoint / f"step-{step:09d}"

    def sharded_step_tmp(self, step: int) -> Path:
        """Where `sharded_step` is written before it is renamed into place."""
        return self.sharded_checkpoint / f".step-{step:09d}.tmp"

    def sharded_steps(self) -> list[Path]:
        """The complete sharded checkpoints, oldest first (temp folders left out)."""
        if not self.sharded_checkpoint.is_dir():
            return []
        return sorted(p for p in self.sharded_checkpoint.glob("step-*") if p.is_dir())

    @staticmethod
    def sharded_state(step_dir: Path) -> Path:
        """state.json in a sharded checkpoint: everything but tensors (the loop's state, the
        schedule's, the RNG's, the number of ranks that wrote it), so loading it runs no
        pickle."""
        return step_dir / "state.json"

    def load_result(self) -> Optional[RunResult]:
        """The recorded result, or None if there is none yet (a stopped run counts as none:
        it resumes from its checkpoint)."""
        if not self.result.exists():
            return None
        result = RunResult.from_dict(read_json(self.result))
        return None if result.status == "stopped" else result

    def write_result(self, result: RunResult) -> None:
        write_json(self.result, result.to_dict())


@dataclass(frozen=True)
class Study:
    """The folder of one study (``results/<study>``) and the name of every file in it."""

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

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / run_id)

    def run_dir(self, run_id: str) -> Path:
        return self.run(run_id).path

    # -- per stage --------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        """The folder of a stage's outputs (each stage's folder is named after it)."""
        return self.root / stage

    def stage_record(self, stage: str) -> Path:
        """``<stage>/stage.json``: who ran the stage, with which commit, when."""
        return self.stage_dir(stage) / "stage.json"

    def stage_table(self, stage: str) -> Path:
        """``<stage>/runs.parquet``: one row per run a training stage planned, with its tags."""
        return self.stage_dir(stage) / "runs.parquet"

    @property
    def check_verdict(self) -> Path:
        return self.stage_dir("check") / "verdict.json"

    @property
    def check_plot(self) -> Path:
        return self.stage_dir("check") / "coord_check.png"

    @property
    def check_fits(self) -> Path:
        return self.stage_dir("check") / "coord_fits.csv"

    @property
    def check_measurements(self) -> Path:
        return self.stage_dir("check") / "coord_measurements.csv"

    @property
    def sweep_table(self) -> Path:
        return self.stage_table("sweep")

    @property
    def select_file(self) -> Path:
        return self.stage_dir("select") / "global.json"

    @property
    def search_dir(self) -> Path:
        return self.stage_dir("search")

    @property
    def search_state(self) -> Path:
        """The searcher's state after every batch of trials (a killed search resumes)."""
        return self.search_dir / "state.json"

    @property
    def search_journal(self) -> Path:
        """Optuna's journal (the state of the tpe and cmaes searchers)."""
        return self.search_dir / "optuna.journal"

    @property
    def search_trials(self) -> Path:
        return self.search_dir / "trials.parquet"

    @property
    def search_table(self) -> Path:
        """One row per search run (explored trials and re-evaluations), with its tags."""
        return self.stage_table("search")

    @property
    def search_best(self) -> Path:
        return self.search_dir / "best.json"

    @property
    def search_progress_plot(self) -> Path:
        return self.search_dir / "best_so_far.png"

    def transfer_dir(self, target: str, arm: str) -> Path:
        return self.stage_dir("transfer") / target / arm

    def transfer_settings(self, target: str, arm: str) -> Path:
        """The (target, arm)'s resolved settings (``cpt describe --json``), for any trainer."""
        return self.transfer_dir(target, arm) / "settings.json"

    def transfer_runs(self, target: str, arm: str) -> Path:
        """The (target, arm)'s run configs, one per seed."""
        return self.transfer_dir(target, arm) / "runs.json"

    @property
    def transfer_done(self) -> Path:
        return self.stage_dir("transfer") / "done.json"

    @property
    def target_table(self) -> Path:
        return self.stage_table("target")

    @property
    def target_tuned(self) -> Path:
        """Each target's own optimum from ``targets.sweep`` and its ``global_tuned`` runs."""
        return self.stage_dir("target") / "tuned.json"

    @property
    def report_dir(self) -> Path:
        return self.stage_dir("report")

    @property
    def report_file(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def report_html(self) -> Path:
        return self.report_dir / "report.html"

    @property
    def report_summary(self) -> Path:
        """Each claim's verdict and numbers (``metrics``), for MLflow and scripts."""
        return self.report_dir / "summary.json"

    @property
    def report_runs(self) -> Path:
        """Every run of the study with its stage tags (`cp.stages.runs_table`)."""
        return self.report_dir / "runs.parquet"

    def report_figure(self, name: str) -> Path:
        """A figure of the report (``name`` without its .png)."""
        return self.report_dir / f"{name}.png"

    @property
    def search_comparison(self) -> Path:
        """benchmarks/search_comparison.py's numbers for this study, if it was run."""
        return self.root / "search_comparison.json"

    def search_comparison_journal(self, algorithm: str) -> Path:
        """The Optuna journal of one algorithm's search in that benchmark."""
        return self.root / "search-comparison" / algorithm / "optuna.journal"

    # -- other tools' files ------------------------------------------------------------------
    @property
    def slurm_dir(self) -> Path:
        """Where SLURM job scripts and logs go unless launcher.slurm.log_dir says otherwise."""
        return self.root / "slurm"

    @property
    def mlflow_db(self) -> Path:
        """The embedded MLflow store."""
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"
