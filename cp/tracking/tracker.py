"""A stage's live MLflow logging: a background thread, so a slow store never holds up training;
the first failure (a server that is down) turns tracking off for the rest of the stage with
one warning, and ``cpt sync`` catches up later.

Inside a pipeline the thread runs in the pipeline's tracking hub (`cp.tracking.hub`), which
keeps mlflow imported and the store open for every stage; a stage started on its own (or
one that cannot reach the hub) runs it in its own process."""

from __future__ import annotations

import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from ..config import PlannedRun, RunResult
from ..stages import get as get_stage
from ..study import Study
from .store import STAGE_STATUS, Store
from .sync import stage_runs

FLUSH_TIMEOUT_S = 300.0
"""How long a finished stage waits for its logging to drain before it gives up on it."""


def _warn(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _short_error(e: BaseException) -> str:
    """The gist of an error: MLflow's HTTP errors bury the OS error under the whole request."""
    import re

    text = str(e).splitlines()[0] if str(e) else ""
    os_error = re.search(r"\[Errno -?\d+\][^\"')]*", text)
    return f"{type(e).__name__}: {os_error.group(0) if os_error else text[:200]}"


_T = TypeVar("_T", bound="ClosingTracker")


class ClosingTracker:
    """A tracker used as a context: leaving it waits for the logging to get through."""

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        raise NotImplementedError

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], *exc: object) -> None:
        # Interrupted (Ctrl-C, a job's time limit): do not hold the exit for the store.
        interrupted = exc_type is not None and not issubclass(exc_type, Exception)
        self.close(5.0 if interrupted else FLUSH_TIMEOUT_S)


class StageTracker(ClosingTracker):
    """Logs one stage while it runs: the parent run at the start, each training run as its
    result comes back (`on_result`, the launcher's hook), the stage's outputs at the end.

    Work happens on a daemon thread in order, so training never waits for the store. Any
    error turns tracking off for the rest of the stage, with one warning on stderr; the study
    goes on and ``cpt sync`` fills in what is missing.

    ``store`` gives the stage its `Store` (default: a new one, which imports mlflow and opens
    the store); ``lock`` is held around each store operation (a hub's trackers share one
    store, one operation at a time). ``logged_by`` is tagged on the stage's parent run
    (``cp.logged_by``): ``stage`` (this process) or ``hub`` (the pipeline's).
    """

    def __init__(self, study: Study, stage: str, uri: str, experiment: str,
                 record: Optional[dict] = None, warn: Callable[[str], None] = _warn,
                 hidden: Optional[dict[str, str]] = None,
                 store: Optional[Callable[[], Store]] = None,
                 lock: Optional[contextlib.AbstractContextManager] = None,
                 logged_by: str = "stage"):
        self.study, self.stage, self.uri, self.experiment = study, stage, uri, experiment
        self.hidden = hidden  # run settings read from the environment (`Store`)
        self.record, self.warn = record, warn
        self._new_store = store or (lambda: Store(uri, experiment, study, hidden))
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self.logged_by = logged_by  # tagged on the parent: which process logged the stage
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
    def on_result(self, pr: PlannedRun, result: RunResult) -> None:
        """The launcher's result hook: log a training run the stage just finished."""
        self.log_run(pr.run_id, dict(pr.tags), pr.config.to_dict(), result.to_dict())

    def log_run(self, run_id: str, tags: dict, config: dict, result: dict) -> None:
        """Log a training run (its planned tags, config and result as plain data)."""
        self._submit(self._log_run, run_id, tags, config, result)

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
                with self._lock:
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
        self._store = self._new_store()
        self._parent = self._store.parent(self.stage, self.record, self.logged_by)
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
        store.log_outputs(parent, get_stage(self.stage).outputs(self.study))
        status = STAGE_STATUS.get((record or {}).get("status", "done"), "FINISHED")
        store.set_status(parent, status, (record or {}).get("finished") or time.time())


class NullTracker:
    """Tracking switched off (``tracking.enabled: false``)."""

    failed: Optional[str] = None

    def on_result(self, pr: PlannedRun, result: RunResult) -> None:
        pass

    def finish(self, record: Optional[dict] = None) -> None:
        pass

    def close(self, timeout: float = 0.0) -> bool:
        return True

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        pass
