"""The study folder, the source of truth of a study. Every path of a study is named here and
nowhere else.

    results/<study>/
      spec.yaml                      the spec as resolved (defaults filled in; interpolations
                                     such as ${oc.env:X} kept as written)
      lock.json                      who is working on the study now (`cp.lock`)
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

Writes are atomic (temp file, then rename), so a killed stage never leaves half a file; a write
that fails (a full disk, a read-only folder) leaves no temp file and raises `StorageError`.
Reads are checked: a file that cannot be what it claims to be (unparseable, truncated, missing
fields, another run's) raises `CorruptFile`, and whoever can redo it sets it aside (renamed
``<name>.corrupt-<time>``, never deleted, with a warning naming it) and redoes it.

Every name that becomes a path component (the study, a model, an arm, a sweep block) is a
plain name (`plain_name_problem`), so nothing a spec says can reach outside the study folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .config import RunResult, run_id_of

if TYPE_CHECKING:
    import polars as pl

PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
"""A name that is one path component: letters, digits, ``.``, ``_``, ``-``; no leading dot."""


def plain_name_problem(name: object) -> Optional[str]:
    """None when ``name`` can name a folder or file inside a study, else what is wrong."""
    if isinstance(name, str) and PLAIN_NAME.match(name):
        return None
    return (f"{name!r} is not a plain name: it names a folder inside the study, so it must be "
            "1-100 letters, digits, '.', '_' or '-', not starting with '.' (no '/', no '..')")


def _component(name: str) -> str:
    """``name`` as one path component; a ValueError for anything else (the spec's checks
    refuse such names first: this is the wall behind them)."""
    problem = plain_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


# ---------------------------------------------------------------------------------------------
# Faults: a file that is not what it should be, a folder that cannot be written.


class CorruptFile(Exception):
    """A study file that cannot be what it claims to be: unreadable, truncated, missing fields,
    or another run's. Whoever can redo it sets it aside (`set_aside`) and redoes it."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return f"{self.path} is corrupt: {self.reason}"


#: OS errors that say the study folder cannot be written (or read) where it is: the
#: environment's fault, never a run's result.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


class StorageError(Exception):
    """The study folder cannot be written: a full disk or quota, a read-only file system, no
    permission. Not a failed run (nothing is recorded): free space or fix the folder, then run
    the same command again; what finished is kept."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(path, reason)
        self.path, self.reason = Path(path), reason

    def __str__(self) -> str:
        return (f"cannot write {self.path}: {self.reason}. Free space (or make the folder "
                "writable), then run the same command again: finished runs are kept")


def storage_error(e: BaseException, path: Path | str) -> Optional[StorageError]:
    """``e`` as a `StorageError` about ``path`` when it is one (see `STORAGE_ERRNOS`)."""
    if isinstance(e, StorageError):
        return e
    if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
        return StorageError(e.filename or path, e.strerror or str(e))
    return None


def warn(message: str) -> None:
    """A warning on stderr (the study goes on)."""
    print(f"cpt: warning: {message}", file=sys.stderr, flush=True)


def set_aside(path: Path, reason: str, redo: str = "it is redone") -> Optional[Path]:
    """Rename a corrupt file to ``<name>.corrupt-<time>`` beside it (never delete it) and warn,
    naming both; returns the new path (None if it was already gone)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    dest = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        os.replace(path, dest)
    except FileNotFoundError:  # set aside by another reader meanwhile
        return None
    except OSError as e:
        raise storage_error(e, path) or e from None
    warn(f"{path} is corrupt ({reason}); set aside as {dest.name}; {redo}")
    return dest


# ---------------------------------------------------------------------------------------------
# Writing and reading files.


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside ``path``, then rename: readers never see half a file. A
    failed write leaves no temp file and raises `StorageError` when the folder is at fault."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(e, path) or e from None


def write_json(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1, allow_nan=True) + "\n").encode())


def write_record(path: Path, obj: Any) -> None:
    """`write_json`, falling back to rewriting the file in place when the disk is full (a
    small file's own blocks are freed and reused): a stage that stops for want of space
    still says so in its record instead of "running"."""
    try:
        write_json(path, obj)
    except StorageError:
        try:
            with open(path, "w") as f:
                f.write(json.dumps(obj, indent=1, allow_nan=True) + "\n")
        except OSError:
            pass  # read-only: nothing can be recorded; the error that stopped the stage says it


def write_text(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def read_json(path: Path, *keys: str) -> Any:
    """A JSON file; with ``keys``, an object that has them. `CorruptFile` when it is not."""
    path = Path(path)
    try:
        obj = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CorruptFile(path, f"not valid JSON ({e})") from None
    if keys:
        if not isinstance(obj, dict):
            raise CorruptFile(path, f"expected a JSON object, found {type(obj).__name__}")
        missing = [k for k in keys if k not in obj]
        if missing:
            raise CorruptFile(path, f"missing {', '.join(map(repr, missing))}")
    return obj


def read_json_list(path: Path, *keys: str) -> list[dict]:
    """A JSON list of objects, each with ``keys``; `CorruptFile` when it is not."""
    obj = read_json(path)
    if not isinstance(obj, list):
        raise CorruptFile(path, f"expected a JSON list, found {type(obj).__name__}")
    for i, item in enumerate(obj):
        if not isinstance(item, dict) or any(k not in item for k in keys):
            raise CorruptFile(path, f"entry {i} is not an object with {', '.join(keys)}")
    return obj


def write_parquet(path: Path, rows: list[dict],
                  schema: Optional[dict[str, Any]] = None) -> None:
    """A polars table of ``rows`` written atomically (``schema``: the columns an empty table
    still has)."""
    import polars as pl

    df = pl.DataFrame(rows, infer_schema_length=None) if rows or schema is None else \
        pl.DataFrame(schema=schema)
    buf = io.BytesIO()
    df.write_parquet(buf)
    write_bytes_atomic(path, buf.getvalue())


def read_table(path: Path, columns: Iterable[str] = ()) -> pl.DataFrame:
    """A parquet table that has ``columns``; `CorruptFile` when it is unreadable or lacks
    them."""
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except FileNotFoundError:
        raise
    except Exception as e:  # polars raises its own errors, and OSError, for a broken file
        raise CorruptFile(path, f"not a readable parquet table ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CorruptFile(path, f"missing column(s) {', '.join(missing)}")
    return df


def json_hash(obj: Any) -> str:
    """A hash of a JSON-able object's content (key order and layout do not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=True).encode()
                          ).hexdigest()[:16]


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: what `cp.train.train` and the launchers read and write there.

    ``run_id``: the run the folder is for (`Study.run` names its folders by run id); with it,
    a config or result of another run found in the folder is corrupt."""

    path: Path
    run_id: Optional[str] = None

    @property
    def config(self) -> Path:
        """config.json: the run's id, config and resolved settings."""
        return self.path / "config.json"

    @property
    def result(self) -> Path:
        """result.json: the run's `RunResult` (a failed or diverged run has one too), bound to
        its config.json by the config's hash."""
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

    # -- config.json ---------------------------------------------------------------------------
    def write_config(self, run_id: str, config: dict[str, Any], resolved: dict[str, Any]
                     ) -> None:
        write_json(self.config, {"run_id": run_id, "config": config, "resolved": resolved})

    def read_config(self) -> Optional[dict[str, Any]]:
        """config.json (None if absent), checked: its resolved settings hash to its run id,
        which is this folder's. `CorruptFile` otherwise."""
        if not self.config.exists():
            return None
        cfg = read_json(self.config, "run_id", "config", "resolved")
        if not isinstance(cfg["config"], dict) or not isinstance(cfg["resolved"], dict):
            raise CorruptFile(self.config, "its config or resolved settings are not objects")
        if self.run_id is not None and cfg["run_id"] != self.run_id:
            raise CorruptFile(self.config, f"it is the config of run {cfg['run_id']!r}, not "
                              f"of {self.run_id!r} whose folder it is in")
        if run_id_of(cfg["resolved"]) != cfg["run_id"]:
            raise CorruptFile(self.config, "its resolved settings do not hash to its run id "
                              f"{cfg['run_id']!r} (edited or damaged)")
        return cfg

    # -- result.json ---------------------------------------------------------------------------
    def read_result(self) -> Optional[RunResult]:
        """The recorded result (None if there is none), checked: its fields, its run id, and
        the hash of the config.json it was written with. `CorruptFile` otherwise (the config
        or the result, whichever is bad)."""
        if not self.result.exists():
            return None
        try:
            result = RunResult.from_dict(read_json(self.result))
        except (TypeError, ValueError) as e:
            raise CorruptFile(self.result, str(e)) from None
        if self.run_id is not None and result.run_id != self.run_id:
            raise CorruptFile(self.result, f"it is the result of run {result.run_id!r}, not "
                              f"of {self.run_id!r} whose folder it is in")
        if result.config_hash is not None:  # results written before v0.2 have none
            cfg = self.read_config()
            if cfg is None:
                raise CorruptFile(self.result, "the config.json it was written with is gone")
            if cfg["run_id"] != result.run_id or json_hash(cfg) != result.config_hash:
                raise CorruptFile(self.result, "it was written with another config.json than "
                                  "the one beside it")
        return result

    def load_result(self) -> Optional[RunResult]:
        """The recorded result, or None if there is none yet (a stopped run counts as none:
        it resumes from its checkpoint). A corrupt result (or config) is set aside, with a
        warning, and counts as none: the run is trained again."""
        try:
            result = self.read_result()
        except CorruptFile as e:
            self.set_aside_result(e)
            return None
        return None if result is None or result.status == "stopped" else result

    def set_aside_result(self, e: CorruptFile) -> None:
        """Set aside the corrupt file of ``e`` and the result that can no longer be checked
        against it."""
        redo = "the run is trained again"
        set_aside(e.path, e.reason, redo)
        if e.path != self.result and self.result.exists():
            set_aside(self.result, f"its {e.path.name} was corrupt, so it cannot be checked",
                      redo)

    def write_result(self, result: RunResult) -> None:
        """Write ``result``, bound to the config.json beside it (its hash goes in
        ``result.config_hash``)."""
        cfg = None
        with contextlib.suppress(CorruptFile):
            cfg = self.read_config()
        result.config_hash = json_hash(cfg) if cfg is not None else None
        write_json(self.result, result.to_dict())

    # -- events.jsonl --------------------------------------------------------------------------
    def append_event(self, record: dict[str, Any]) -> None:
        """One line on the event log (after a torn last line, on a line of its own)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.events, "ab+") as f:
                f.seek(0, os.SEEK_END)
                torn = False
                if f.tell():
                    f.seek(-1, os.SEEK_END)
                    torn = f.read(1) != b"\n"
                f.write((b"\n" if torn else b"") + json.dumps(record).encode() + b"\n")
        except OSError as e:
            raise storage_error(e, self.events) or e from None

    def read_events(self) -> list[dict]:
        """The event log, oldest first. Lines that are not events (a line torn by a kill) are
        left out; a log that names another run is set aside (``[]``). Either way the original
        is kept beside it as ``events.jsonl.corrupt-<time>``."""
        if not self.events.exists():
            return []
        good: list[dict] = []
        bad: list[int] = []
        lines = self.events.read_bytes().decode(errors="replace").splitlines()
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            if isinstance(rec, dict) and "event" in rec and "time" in rec:
                good.append(rec)
            else:
                bad.append(i)
        foreign = {r["run_id"] for r in good if "run_id" in r} - {self.run_id, None}
        if foreign and self.run_id is not None:
            set_aside(self.events, f"its events are those of run(s) {', '.join(sorted(foreign))}",
                      "a new log starts")
            return []
        if bad:
            set_aside(self.events, f"line(s) {', '.join(map(str, bad[:5]))} are not events",
                      "its other lines are kept in a new log")
            write_text(self.events, "".join(json.dumps(r) + "\n" for r in good))
        return good


@dataclass(frozen=True)
class Study:
    """The folder of one study (``results/<study>``) and the name of every file in it."""

    root: Path

    @classmethod
    def at(cls, results: str | Path, name: str) -> Study:
        """The study called ``name`` in the results folder (a plain name: never a path)."""
        return cls(Path(results) / _component(name))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def spec_file(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def lock_file(self) -> Path:
        """Who is working on the study now (`cp.lock`)."""
        return self.root / "lock.json"

    @property
    def lock_guard(self) -> Path:
        """The file `cp.lock` holds an OS lock on while it reads or changes `lock_file`."""
        return self.root / ".lock.guard"

    def part_of(self, path: Path) -> tuple[str, Optional[str]]:
        """Which part of the study ``path`` belongs to: ``("run", run id)`` for a run's file,
        ``("stage", name)`` for a file in a stage's folder (any first-level folder but
        ``runs``), ``("study", None)`` for the rest."""
        try:
            parts = Path(path).relative_to(self.root).parts
        except ValueError:
            return "study", None
        if len(parts) >= 3 and parts[0] == self.runs_dir.name:
            return "run", parts[1]
        if len(parts) >= 2 and parts[0] != self.runs_dir.name:
            return "stage", parts[0]
        return "study", None

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run(self, run_id: str) -> RunFolder:
        return RunFolder(self.runs_dir / _component(run_id), run_id)

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
        return self.stage_dir("transfer") / _component(target) / _component(arm)

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
        return self.report_dir / f"{_component(name)}.png"

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
