"""A study's experiment in an MLflow store, and where that store is.

    experiment  = the study (``tracking.experiment``, default the study name)
    parent run  = a stage (tag ``cp.stage``), found or created, so a re-run reuses it
    child run   = a training run of that stage (tag ``cp.run_id``), nested under the stage by
                  the ``mlflow.parentRunId`` tag; one per (stage, run id)

Where the store is, first match wins: ``cpt sync --uri``, the spec's ``tracking.uri`` (a
profile's overrides set it), the MLFLOW_TRACKING_URI environment variable, and by default the
study's embedded sqlite store (no server). mlflow is imported here only, and lazily.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Optional

from ..stages import Outputs
from ..study import RunFolder, Study
from .params import redacted, run_metrics, run_name, run_params

# Tag keys. cp.* keys are bookkeeping (what a run is, so nothing is logged twice); the planned
# run's own tags (stage, axis, arm, seed...) are logged under their plain names.
ROLE, STAGE, RUN_ID, STUDY, OUTPUTS = "cp.role", "cp.stage", "cp.run_id", "cp.study", "cp.outputs"
PARENT = "mlflow.parentRunId"
LOGGED_BY = "cp.logged_by"  # a stage's parent: "hub" (the pipeline's) or "stage" (its own process)
GIT_COMMIT = "mlflow.source.git.commit"
# MLflow 3.x's UI opens an experiment by its kind: without one it shows the GenAI overview
# (traces, latency); "custom_model_development" opens the training runs table. (The values
# are the UI's ExperimentKind enum; mlflow/server/js, 3.17.)
EXPERIMENT_KIND, MODEL_DEVELOPMENT = "mlflow.experimentKind", "custom_model_development"
DATASET_CONTEXT = "mlflow.data.context"

# MLflow's HTTP client retries a failing request for minutes by default. A tracking server
# that is down must cost a stage seconds: few retries, short timeout (a user's own settings
# of these variables win).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RUN_STATUS = {"completed": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
              "stopped": "KILLED"}
STAGE_STATUS = {"done": "FINISHED", "failed": "FAILED", "running": "RUNNING"}

def tracking_uri(study: Study, configured: Optional[str] = None) -> str:
    """The tracking URI for ``study``: ``configured`` (a --uri or the spec's tracking.uri), else
    MLFLOW_TRACKING_URI, else the embedded store in the study folder."""
    if configured:
        return configured
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(study.mlflow_db.resolve())


def _sqlite_path(uri: str) -> Optional[Path]:
    prefix = "sqlite:///"
    return Path(uri[len(prefix):]).resolve() if uri.startswith(prefix) else None


def artifact_location(uri: str, experiment: str, study: Study) -> Optional[str]:
    """Artifacts of a local sqlite store go beside the database file (the study's own store:
    `Study.mlflow_artifacts`); a server decides its own (None). MLflow's default would be
    ./mlruns under whatever directory a stage ran in."""
    db = _sqlite_path(uri)
    if db is None:
        return None
    # An experiment name may hold anything MLflow allows ("/", ".."): a folder gets it made
    # plain, so the artifacts stay inside the store's folder.
    folder = re.sub(r"[^A-Za-z0-9._-]", "_", experiment).lstrip(".") or "experiment"
    return (db.parent / study.mlflow_artifacts.name / folder).as_uri()


def _times(folder: RunFolder, result: dict[str, Any]) -> tuple[float, float]:
    """(start, end) of the run's last attempt, from its event log (else its result file)."""
    start = end = None
    for e in folder.read_events():
        if e["event"] == "start":
            start = e["time"]
        elif e["event"] == "finish":
            end = e["time"]
    if end is None:
        end = folder.result.stat().st_mtime if folder.result.exists() else time.time()
    if start is None or start > end:
        start = end - float(result.get("wall_s") or 0.0)
    return start, end


def _quiet_mlflow() -> None:
    # MLflow announces database migrations and run URLs at INFO; the stage's log is ours.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # A database error (a full disk, a locked file) is logged there with its whole traceback
    # before it is raised; the error reaches the tracker, which says it in one warning.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _ms(t: float) -> int:
    return int(t * 1000)


class Store:
    """A study's experiment in an MLflow store. Every write finds before it creates, so
    logging the same study twice adds nothing."""

    def __init__(self, uri: str, experiment: str, study: Study,
                 hidden: Optional[dict[str, str]] = None):
        """``hidden``: dotted paths of run settings read from the environment, with the text
        they were written as (`cp.spec.env_paths`): that text is what MLflow gets."""
        self.hidden = dict(hidden or {})
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
                    experiment, artifact_location=artifact_location(uri, experiment, study),
                    tags={STUDY: study.name, EXPERIMENT_KIND: MODEL_DEVELOPMENT})
            except MlflowException:  # created meanwhile by another process
                created = self.client.get_experiment_by_name(experiment)
                if created is None:  # not that: the creation itself failed
                    raise
                self.experiment_id = created.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self.experiment_id = exp.experiment_id
            if EXPERIMENT_KIND not in exp.tags:  # created by an older cp, or by hand
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND,
                                               MODEL_DEVELOPMENT)
        self._datasets: dict[str, Any] = {}

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

    def parent(self, stage: str, record: Optional[dict] = None,
               logged_by: Optional[str] = None) -> str:
        """The run id of the stage's parent run, created if there is none."""
        found = self.runs(f"tags.`{ROLE}` = 'stage' and tags.`{STAGE}` = '{stage}'")
        tags = {ROLE: "stage", STAGE: stage, STUDY: self.study.name, "stage": stage}
        if logged_by:
            tags[LOGGED_BY] = logged_by
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

        folder = self.study.run(run_id)
        written = folder.read_config()
        if config is None and written is not None:
            config = written["config"]
        if result is None:
            found = folder.read_result()
            if found is None:
                raise FileNotFoundError(f"{folder.result} is gone")
            result = found.to_dict()
        start, end = _times(folder, result)
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
        shown = {**run_params(config or {}), **{k: v for k, v in self.hidden.items()
                                               if k in run_params(config or {})}}
        params = [Param(k, v[:6000]) for k, v in shown.items()]
        self.client.log_batch(child, metrics=metrics, params=params)
        corpus = self.corpus_input((config or {}).get("data"))
        if corpus is not None:
            self.client.log_inputs(child, datasets=[corpus])
        if written is not None and self.hidden:
            self.client.log_text(child, json.dumps(
                {**written, "config": redacted(written["config"], self.hidden),
                 "resolved": redacted(written["resolved"], self.hidden)}, indent=1),
                folder.config.name)
        elif written is not None:
            self.client.log_artifact(child, str(folder.config))
        self.client.set_terminated(child, status=RUN_STATUS.get(result["status"], "FAILED"),
                                   end_time=_ms(end))
        return child

    def corpus_input(self, data: Optional[dict[str, Any]]) -> Any:
        """The run's corpus (its config's ``data`` section) as an MLflow training dataset
        input: the runs table shows it, and the same corpus is one dataset across runs. None
        when the config names no corpus or the corpus file is gone."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from ..data import BUNDLED, DataConfig, TokenDir, corpus_fingerprint

        if data and data.get("tokens"):  # a prepared token directory: its meta.json says all
            folder = TokenDir(data["tokens"])
            key = f"tokens\0{data['tokens']}"
            if key not in self._datasets:
                try:
                    digest = folder.meta_sha256()[:16]
                except OSError:
                    return None
                self._datasets[key] = Dataset(
                    name=Path(data["tokens"]).name, digest=digest, source_type="local",
                    source=json.dumps({"uri": str(Path(data["tokens"]).expanduser().resolve())}))
            return DatasetInput(self._datasets[key], [InputTag(DATASET_CONTEXT, "training")])
        if not data or not data.get("corpus"):
            return None
        cfg = DataConfig(corpus=data["corpus"])
        key = f"{cfg.corpus}\0{data.get('val_fraction')}"
        if key not in self._datasets:
            bundled = cfg.corpus in BUNDLED
            try:
                digest = corpus_fingerprint(cfg)[:16]
            except OSError:
                return None
            source = (f"cp.corpora/{BUNDLED[cfg.corpus]}" if bundled
                      else str(Path(cfg.corpus).expanduser().resolve()))
            self._datasets[key] = Dataset(
                name=cfg.corpus if bundled else Path(cfg.corpus).name, digest=digest,
                source_type="code" if bundled else "local",
                source=json.dumps({"uri": source}),
                profile=json.dumps({"val_fraction": data.get("val_fraction")}))
        return DatasetInput(self._datasets[key], [InputTag(DATASET_CONTEXT, "training")])

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
