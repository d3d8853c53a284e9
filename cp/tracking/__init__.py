"""MLflow tracking: a browsable view of the study folder, which stays the source of truth.

A child run holds a training run's resolved config flattened into params, its tags (stage,
axis, arm..., git commit), its train and validation loss per step, throughput and divergence
as metrics, and ``config.json`` (with the resolved per-group settings) as an artifact. A stage's
parent run holds what the stage module says it shows (`cp.stages.Stage.outputs`): tables,
plots, the report, and their headline numbers as metrics.

Everything logged is read from the study folder (or is exactly what was written there), so
`sync` can log a study into an empty or another store later, adding only what is missing:

- `params`: a run as params, metrics and a name (plain data, no mlflow);
- `store`: the experiment in a store, and where the store is;
- `tracker`: a stage's live logging on a background thread;
- `hub`: the pipeline's one logger, which every stage's logging goes through;
- `sync`: ``cpt sync``.
"""

from .hub import Hub, HubTracker, stage_tracker, start_hub
from .params import flatten, run_metrics, run_name, run_params
from .store import Store, tracking_uri
from .sync import SyncReport, stage_runs, sync
from .tracker import NullTracker, StageTracker

__all__ = ["Hub", "HubTracker", "NullTracker", "StageTracker", "Store", "SyncReport", "flatten",
           "run_metrics", "run_name", "run_params", "stage_runs", "stage_tracker", "start_hub",
           "sync", "tracking_uri"]
