"""MLflow tracking: a browsable view of the study folder, which stays the source of truth.

    experiment  = the study (``tracking.experiment``, default the study name)
    parent run  = a stage (tag ``cp.stage``), found or created, so a re-run reuses it
    child run   = a training run of that stage (tag ``cp.run_id``), nested under the stage by
                  the ``mlflow.parentRunId`` tag; one per (stage, run id)

A child holds the run's resolved config flattened into params, its tags (stage, axis, arm...,
git commit), its train and validation loss per step, throughput and divergence as metrics, and
``config.json`` (with the resolved per-group settings) as an artifact. A parent holds the
stage's outputs: tables, plots, the report, and their headline numbers as metrics.

Everything logged is read from the study folder (or is exactly what was written there), so
`sync` can log a study into an empty or another store later, adding only what is missing. A
stage logs through a `StageTracker`: a background thread, so a slow store never holds up
training, and the first failure (a server that is down) turns tracking off for the rest of the
stage with one warning; ``cpt sync`` catches up.

Where the store is, first match wins: ``cpt sync --uri``, the spec's ``tracking.uri`` (a
profile's overrides set it), the MLFLOW_TRACKING_URI environment variable, and by default
``sqlite:///<study folder>/mlflow.db`` (embedded, no server). mlflow is imported lazily, only
where something is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .config import CONFIG_FILE, RESULT_FILE
from .provenance import STAGE_RECORD
from .study import Study, read_json

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"

# Tag keys. cp.* keys are bookkeeping (what a run is, so nothing is logged twice); the planned
# run's own tags (stage, axis, arm, seed...) are logged under their plain names.
ROLE, STAGE, RUN_ID, STUDY, OUTPUTS = "cp.role", "cp.stage", "cp.run_id", "cp.study", "cp.outputs"
PARENT = "mlflow.parentRunId"
GIT_COMMIT = "mlflow.source.git.commit"

# MLflow's HTTP client retries a failing request for minutes by default. A tracking server
# that is down must cost a stage seconds: few retries, short timeout (a user's own settings
# of these variables win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
FLUSH_TIMEOUT_S = 300.0
"""How long a finished stage waits for its logging to drain before it gives up on it."""

RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "stopped": "KILLED"}
STAGE_STATUS = {"done": "FINISHED", "failed": "FAILED", "running": "RUNNING"}

# Columns of the stage tables that are results, not the planned run's tags.
RESULT_COLUMNS = frozenset({"run_id", "width", "depth", "batch", "tokens", "seq_len", "status",
                            "diverged", "final_val_loss", "loss", "steps", "tokens_per_s",
                            "wall_s", "n_params"})


# ---------------------------------------------------------------------------------------------
# Where the store is.


def tracking_uri(study: Study, configured: Optional[str] = None) -> str:
    """The tracking URI for ``study``: ``configured`` (a --uri or the spec's tracking.uri), else
    MLFLOW_TRACKING_URI, else the embedded store in the study folder."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str((study.root / DB_FILE).resolve())


def _sqlite_path(uri: str) -> Optional[Path]:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]).resolve() if uri.startswith(prefix) else None


def artifact_location(uri: str, experiment: str) -> Optional[str]:
    """Artifacts of a local sqlite store go beside the database file; a server decides its
    own (None). MLflow's default would be ./mlruns under whatever directory a stage ran in."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIR / experiment).as_uri()


# ---------------------------------------------------------------------------------------------
# What is logged: plain data from the study folder, no mlflow.


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts and lists as dotted keys with string values (``hps.lr``,
    ``multipliers.per_layer.lr.0``); an empty container is kept as ``{}`` / ``[]``."""
    if isinstance(obj, dict):
        if not obj and prefix:
            return {prefix: "{}"}
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, (list, tuple)):
        if not obj:
            return {prefix: "[]"}
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: str(obj)}


def run_params(config: dict[str, Any]) -> dict[str, str]:
    """A RunConfig (as a dict) flattened to params: scale, base scale, parameterisation, every
    base HP and multiplier, schedule, data, training; plus the transfer multipliers m_N, m_L,
    m_B, m_D. ``runtime`` is left out: it does not change a run's numbers."""
    params = flatten({k: v for k, v in config.items() if k != "runtime"})
    scale, base = config.get("scale"), config.get("base_scale")
    if scale and base:
        from .scaling import Scale, scale_multipliers

        mults = scale_multipliers(Scale(**base), Scale(**scale))
        params.update({f"m.{axis}": f"{m:g}" for axis, m in mults.items()})
    return params


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_metrics(result: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(key, value, step): validation loss at every evaluation, train loss at every log point,
    and the run's scalars at its last step. Non-finite points (a diverged run's NaN) are left
    out; ``diverged`` says what happened."""
    out = [("val_loss", float(e["val_loss"]), int(e["step"]))
           for e in result.get("eval_curve", []) if _finite(e.get("val_loss"))]
    out += [("train_loss", float(loss), int(step))
            for step, loss in result.get("train_curve", []) if _finite(loss)]
    last = int(result.get("steps") or 0)
    finite_evals = [e["val_loss"] for e in result.get("eval_curve", [])
                    if _finite(e.get("val_loss"))]
    scalars = {"final_val_loss": result.get("final_val_loss"),
               "best_val_loss": min(finite_evals) if finite_evals else None,
               "tokens_per_s": result.get("tokens_per_s"), "wall_s": result.get("wall_s"),
               "tokens": result.get("tokens"), "n_params": result.get("n_params"),
               "diverged": 1.0 if result.get("diverged") else 0.0}
    out += [(k, float(v), last) for k, v in scalars.items() if _finite(v)]
    return out


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def run_name(tags: dict[str, Any]) -> str:
    """A short readable name from a run's tags: ``sp width=64 lr=0.01 seed=0``."""
    parts = []
    for k, v in tags.items():
        if v is None or k in ("stage", "axis_value"):
            continue
        if k == "axis":
            parts.append("base" if v == "base" else f"{v}={_fmt(tags.get('axis_value'))}")
        elif k in ("parameterisation", "model", "arm", "purpose"):
            parts.append(str(v))
        else:
            parts.append(f"{k}={_fmt(v)}")
    return " ".join(parts)[:250] or "run"


def _times(run_dir: Path, result: dict[str, Any]) -> tuple[float, float]:
    """(start, end) of the run's last attempt, from its event log (else its result file)."""
    start = end = None
    events = run_dir / "events.jsonl"
    if events.exists():
        for line in events.read_text().splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            if e.get("event") == "start":
                start = e["time"]
            elif e.get("event") == "finish":
                end = e["time"]
    if end is None:
        path = run_dir / RESULT_FILE
        end = path.stat().st_mtime if path.exists() else time.time()
    if start is None or start > end:
        start = end - float(result.get("wall_s") or 0.0)
    return start, end


def stage_runs(study: Study, stage: str) -> list[tuple[str, dict[str, Any]]]:
    """(run id, tags) of every training run of a finished stage, from its table.

    A run the stage planned several times (the base grid of every parameterisation, which
    resolve alike at the base scale; a per-module arm whose multipliers are all 1) was trained
    once and is logged once, with the tags of its first row, as the launcher ran it; its
    other roles go into an ``also`` tag (``parameterisation=sp; arm=per_module``).
    """
    import polars as pl

    table = {"sweep": study.sweep_table, "search": study.search_table,
             "target": study.target_table}.get(stage)
    if table is None or not table.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    also: dict[str, list[str]] = {}
    for row in pl.read_parquet(table).to_dicts():
        run_id = row.get("run_id")
        if not run_id:
            continue
        tags = {k: v for k, v in row.items() if k not in RESULT_COLUMNS and v is not None}
        if run_id not in out:
            out[run_id] = tags
            continue
        first = out[run_id]
        role = " ".join(f"{k}={_fmt(v)}" for k, v in tags.items() if first.get(k) != v)
        if role and role not in also.setdefault(run_id, []):
            also[run_id].append(role)
    for run_id, roles in also.items():
        if roles:
            out[run_id] = {**out[run_id], "also": "; ".join(roles)}
    return list(out.items())


@dataclass
class Outputs:
    """What a stage's parent run shows: its files and their headline numbers."""

    metrics: list[tuple[str, float, int]] = field(default_factory=list)
    files: list[tuple[Path, Optional[str]]] = field(default_factory=list)
    """(local file or folder, artifact path)."""

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


def _table_counts(path: Path) -> list[tuple[str, float, int]]:
    import polars as pl

    if not path.exists():
        return []
    df = pl.read_parquet(path).unique("run_id")
    counts = {"runs": len(df)}
    for status in ("completed", "diverged", "failed"):
        counts[f"runs_{status}"] = df.filter(pl.col("status") == status).height
    return [(k, float(v), 0) for k, v in counts.items()]


def stage_outputs(study: Study, stage: str) -> Outputs:
    """The files and numbers a stage left in the study folder (whatever of them exists)."""
    out = Outputs()
    folder = study.stage_dir(stage)

    def add(path: Path, dest: Optional[str] = stage) -> None:
        if path.exists():
            out.files.append((path, dest))

    add(study.spec_file, None)
    if stage == "check":
        for name in ("coord_check.png", "coord_fits.csv", "coord_measurements.csv",
                     "verdict.json", STAGE_RECORD):
            add(folder / name)
        if study.check_verdict.exists():
            v = read_json(study.check_verdict)
            if v.get("status") == "pass":
                out.metrics.append(("check_passed", 1.0, 0))
    elif stage in ("sweep", "target"):
        add(folder / "runs.parquet")
        add(folder / STAGE_RECORD)
        out.metrics += _table_counts(folder / "runs.parquet")
        if stage == "target" and study.target_table.exists():
            import polars as pl

            df = pl.read_parquet(study.target_table).filter(pl.col("status") == "completed")
            for r in df.group_by("model", "arm").agg(pl.col("final_val_loss").mean()).to_dicts():
                out.metrics.append((f"{r['model']}.{r['arm']}.final_val_loss",
                                    float(r["final_val_loss"]), 0))
    elif stage == "select":
        add(study.select_file)
        add(folder / STAGE_RECORD)
        if study.select_file.exists():
            for table, sel in read_json(study.select_file).items():
                for kind, value in sel.get("values", {}).items():
                    out.metrics.append((f"{table}.{kind}", float(value), 0))
                if _finite(sel.get("loss")):
                    out.metrics.append((f"{table}.grid_best_loss", float(sel["loss"]), 0))
    elif stage == "search":
        for name in ("best.json", "trials.parquet", "runs.parquet", "best_so_far.png",
                     "state.json", STAGE_RECORD):
            add(folder / name)
        if study.search_best.exists():
            best = read_json(study.search_best)
            if best.get("status") == "done":
                out.metrics.append(("best_loss", float(best["best_loss"]), 0))
                for key, src in (("reeval_best_mean", "reeval"),
                                 ("reeval_global_mean", "global_reeval")):
                    if _finite(best.get(src, {}).get("mean")):
                        out.metrics.append((key, float(best[src]["mean"]), 0))
        state = folder / "state.json"
        if state.exists():
            running = math.inf
            for t in read_json(state)["trials"]:
                if t["purpose"] != "explore" or t["loss"] is None:
                    continue
                if _finite(t["loss"]):
                    out.metrics.append(("trial_loss", float(t["loss"]), int(t["id"])))
                    running = min(running, t["loss"])
                if math.isfinite(running):
                    out.metrics.append(("best_so_far", float(running), int(t["id"])))
    elif stage in ("transfer", "report"):
        add(folder, None)  # the whole folder: settings per (target, arm); the report
        summary = study.report_dir / "summary.json"
        if stage == "report" and summary.exists():
            out.metrics += [(k, float(v), 0) for k, v in
                            read_json(summary).get("metrics", {}).items() if _finite(v)]
    return out


# ---------------------------------------------------------------------------------------------
# The store.


def _quiet_mlflow() -> None:
    # MLflow announces database migrations and run URLs at INFO; the stage's log is ours.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _ms(t: float) -> int:
    return int(t * 1000)


class Store:
    """A study's experiment in an MLflow store. Every write finds before it creates, so
    logging the same study twice adds nothing."""

    def __init__(self, uri: str, experiment: str, study: Study):
        for k, v in HTTP_DEFAULTS.items():
            os.environ.setdefault(k, v)
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        _quiet_mlflow()
        self.uri, self.study = uri, study
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=artifact_location(uri, experiment),
                    tags={STUDY: study.name})
            except MlflowException:  # created meanwhile by another process
                self.experiment_id = self.client.get_experiment_by_name(experiment).experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id

    def runs(self, filter_string: str) -> list:
        """Every active run of the experiment that matches (all pages)."""
        out, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string,
                                           max_results=1000, page_token=token)
            out += list(page)
            token = page.token
            if not token:
                return out

    def parent(self, stage: str, record: Optional[dict] = None) -> str:
        """The run id of the stage's parent run, created if there is none."""
        found = self.runs(f"tags.`{ROLE}` = 'stage' and tags.`{STAGE}` = '{stage}'")
        tags = {ROLE: "stage", STAGE: stage, STUDY: self.study.name, "stage": stage}
        if record and record.get("git_commit"):
            tags[GIT_COMMIT] = record["git_commit"]
        if found:
            run_id = min(found, key=lambda r: r.info.start_time).info.run_id
            self.set_tags(run_id, tags)
            return run_id
        start = record.get("started") if record else None
        run = self.client.create_run(self.experiment_id, run_name=stage, tags=tags,
                                     start_time=_ms(start) if start else None)
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def set_status(self, run_id: str, status: str, end: Optional[float] = None) -> None:
        if status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            self.client.set_terminated(run_id, status=status,
                                       end_time=_ms(end) if end else None)

    def children(self, parent_id: str) -> dict[str, Any]:
        """The parent's training runs by cp.run_id."""
        return {r.data.tags[RUN_ID]: r for r in
                self.runs(f"tags.`{PARENT}` = '{parent_id}' and tags.`{ROLE}` = 'run'")
                if RUN_ID in r.data.tags}

    def is_current(self, child: Any, result: dict[str, Any]) -> bool:
        """Whether a logged child is complete and shows the run's present result (a run
        trained again after a failure gets a new one)."""
        return (child.info.status != "RUNNING"
                and child.data.tags.get("status") == result.get("status"))

    def delete(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def log_child(self, parent_id: str, stage: str, run_id: str, tags: dict[str, Any],
                  config: Optional[dict] = None, result: Optional[dict] = None,
                  record: Optional[dict] = None) -> str:
        """One training run as a child of ``parent_id``: tags, params, metric curves, its
        config.json, then its final status (a child still RUNNING was cut off mid-way)."""
        from mlflow.entities import Metric, Param

        run_dir = self.study.run_dir(run_id)
        if config is None and (run_dir / CONFIG_FILE).exists():
            config = read_json(run_dir / CONFIG_FILE).get("config")
        if result is None:
            result = read_json(run_dir / RESULT_FILE)
        start, end = _times(run_dir, result)
        all_tags = {k: str(v) for k, v in tags.items() if v is not None}
        all_tags.update({ROLE: "run", STAGE: stage, RUN_ID: run_id, STUDY: self.study.name,
                         PARENT: parent_id, "stage": stage, "status": result["status"]})
        if result.get("reason"):
            all_tags["reason"] = str(result["reason"])[-5000:]
        if record and record.get("git_commit"):
            all_tags[GIT_COMMIT] = record["git_commit"]
        run = self.client.create_run(self.experiment_id, start_time=_ms(start),
                                     tags=all_tags, run_name=run_name(tags))
        child = run.info.run_id
        total = max(1, int(result.get("total_steps") or result.get("steps") or 1))
        metrics = [Metric(k, v, _ms(start + (end - start) * min(step, total) / total), step)
                   for k, v, step in run_metrics(result)]
        params = [Param(k, v[:6000]) for k, v in run_params(config or {}).items()]
        self.client.log_batch(child, metrics=metrics, params=params)
        if (run_dir / CONFIG_FILE).exists():
            self.client.log_artifact(child, str(run_dir / CONFIG_FILE))
        self.client.set_terminated(child, status=RUN_STATUS.get(result["status"], "FAILED"),
                                   end_time=_ms(end))
        return child

    def log_outputs(self, parent_id: str, outputs: Outputs) -> None:
        """The stage's files and numbers on its parent, then the fingerprint that says so."""
        from mlflow.entities import Metric, RunTag

        for path, dest in outputs.files:
            if path.is_dir():
                self.client.log_artifacts(parent_id, str(path), path.name)
            else:
                self.client.log_artifact(parent_id, str(path), dest)
        now = _ms(time.time())
        self.client.log_batch(parent_id,
                              metrics=[Metric(k, v, now, s) for k, v, s in outputs.metrics],
                              tags=[RunTag(OUTPUTS, outputs.fingerprint())])


def _record(study: Study, stage: str) -> Optional[dict]:
    path = study.stage_dir(stage) / STAGE_RECORD
    return read_json(path) if path.exists() else None


# ---------------------------------------------------------------------------------------------
# A stage's tracker: a background thread; the first failure warns once and stops logging.


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _short_error(e: BaseException) -> str:
    """The gist of an error: MLflow's HTTP errors bury the OS error under the whole request."""
    import re

    text = str(e).splitlines()[0] if str(e) else ""
    os_error = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    return f"{type(e).__name__}: {os_error.group(0) if os_error else text[:200]}"


class StageTracker:
    """Logs one stage while it runs: the parent run at the start, each training run as its
    result comes back (`on_result`, the launcher's hook), the stage's outputs at the end.

    Work happens on a daemon thread in order, so training never waits for the store. Any
    error turns tracking off for the rest of the stage, with one warning on stderr; the study
    goes on and ``cpt sync`` fills in what is missing.
    """

    def __init__(self, study: Study, stage: str, uri: str, experiment: str,
                 record: Optional[dict] = None, warn: Callable[[str], None] = _warn):
        self.study, self.stage, self.uri, self.experiment = study, stage, uri, experiment
        self.record, self.warn = record, warn
        self.failed: Optional[str] = None
        self._store: Optional[Store] = None
        self._parent: Optional[str] = None
        self._children: dict[str, Any] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"cp-track-{stage}",
                                        daemon=True)
        self._thread.start()
        self._submit(self._open)

    # -- called by the stage -------------------------------------------------------------------
    def on_result(self, pr, result) -> None:
        """The launcher's result hook: log a training run the stage just finished."""
        self._submit(self._log_run, pr.run_id, dict(pr.tags), pr.config.to_dict(),
                     result.to_dict())

    def finish(self, record: Optional[dict] = None) -> None:
        """The stage ended (done or failed, per ``record``): log its outputs and status."""
        self._submit(self._finish, record or self.record)

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait for pending logging (at most ``timeout`` s); whether it all got through."""
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._fail(TimeoutError(f"logging still busy after {timeout:.0f} s"))
            return False
        return self.failed is None

    def __enter__(self) -> StageTracker:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # Interrupted (Ctrl-C, a job's time limit): do not hold the exit for the store.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(5.0 if interrupted else FLUSH_TIMEOUT_S)

    # -- the worker ------------------------------------------------------------------------------
    def _submit(self, fn: Callable, *args: Any) -> None:
        if self.failed is None:
            self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, args = item
            if self.failed is not None:
                continue
            try:
                fn(*args)
            except Exception as e:  # tracking never fails a stage
                self._fail(e)

    def _fail(self, e: BaseException) -> None:
        if self.failed is not None:
            return
        self.failed = _short_error(e)
        self.warn(f"cpt: warning: MLflow tracking at {self.uri} failed in stage {self.stage} "
                  f"({self.failed}); the stage goes on without it. `cpt sync "
                  f"{self.study.root}` logs what is missing once the store is back.")

    def _open(self) -> None:
        self._store = Store(self.uri, self.experiment, self.study)
        self._parent = self._store.parent(self.stage, self.record)
        self._store.set_status(self._parent, "RUNNING")
        self._children = self._store.children(self._parent)

    def _log_run(self, run_id: str, tags: dict, config: dict, result: dict) -> None:
        store, parent = self._store, self._parent
        assert store is not None and parent is not None
        old = self._children.get(run_id)
        if isinstance(old, str):  # logged by this stage already
            return
        if old is not None:
            if store.is_current(old, result):
                return
            store.delete(old.info.run_id)
        self._children[run_id] = store.log_child(parent, self.stage, run_id, tags, config,
                                                 result, self.record)

    def _finish(self, record: Optional[dict]) -> None:
        store, parent = self._store, self._parent
        assert store is not None and parent is not None
        # A run's other roles in the stage are known once the stage's table is written.
        for run_id, tags in stage_runs(self.study, self.stage):
            child = self._children.get(run_id)
            if "also" in tags and isinstance(child, str):
                store.set_tags(child, {"also": tags["also"]})
        store.log_outputs(parent, stage_outputs(self.study, self.stage))
        status = STAGE_STATUS.get((record or {}).get("status", "done"), "FINISHED")
        store.set_status(parent, status, (record or {}).get("finished") or time.time())


class NullTracker:
    """Tracking switched off (``tracking.enabled: false``)."""

    failed: Optional[str] = None

    def on_result(self, pr, result) -> None:
        pass

    def finish(self, record: Optional[dict] = None) -> None:
        pass

    def close(self, timeout: float = 0.0) -> bool:
        return True

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc) -> None:
        pass


def stage_tracker(spec, study: Study, stage: str,
                  record: Optional[dict] = None) -> StageTracker | NullTracker:
    """The tracker of a stage as the spec's ``tracking`` section says."""
    t = spec.tracking
    if not t.enabled:
        return NullTracker()
    return StageTracker(study, stage, tracking_uri(study, t.uri), t.experiment or spec.name,
                        record)


# ---------------------------------------------------------------------------------------------
# cpt sync


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


def sync(study: Study, uri: Optional[str] = None, stages: Optional[Sequence[str]] = None,
         echo: Callable[[str], None] = print) -> SyncReport:
    """Log the study folder into the store: every finished stage as a parent, every training
    run of its table as a child, its outputs; only what is missing or outdated. Reads nothing
    but the study folder. Errors (a store that is down) raise."""
    from .stages import STAGES
    from .study import read_spec

    spec = read_spec(study)
    uri = tracking_uri(study, uri or spec.tracking.uri)
    experiment = spec.tracking.experiment or spec.name
    store = Store(uri, experiment, study)
    report = SyncReport(uri, experiment)
    for stage in stages or STAGES:
        record = _record(study, stage)
        if not study.stage_output(stage).exists() and record is None:
            continue
        report.stages.append(stage)
        parent = store.parent(stage, record)
        children = store.children(parent)
        runs = stage_runs(study, stage)
        before = report.logged + report.replaced
        for run_id, tags in runs:
            result_file = study.run_dir(run_id) / RESULT_FILE
            if not result_file.exists():
                continue
            old = children.get(run_id)
            if old is not None:
                if store.is_current(old, read_json(result_file)):
                    report.present += 1
                    if old.data.tags.get("also") != tags.get("also") and "also" in tags:
                        store.set_tags(old.info.run_id, {"also": tags["also"]})
                    continue
                store.delete(old.info.run_id)
                report.replaced += 1
            else:
                report.logged += 1
            store.log_child(parent, stage, run_id, tags, record=record)
        outputs = stage_outputs(study, stage)
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


__all__ = ["NullTracker", "StageTracker", "Store", "SyncReport", "flatten", "run_metrics",
           "run_params", "stage_outputs", "stage_runs", "stage_tracker", "sync",
           "tracking_uri"]
