"""One MLflow logger per pipeline, so that tracking stays off the stages' critical path.

Imported in a stage process, mlflow costs about a second, opening the store most of another,
and both compete with the stage's own start for the CPU; a stage would then wait for its
logging to drain before it could end. The pipeline (the Snakefile's ``onstart``) starts a
`Hub` in the Snakemake process instead, which mostly waits on its jobs: it imports mlflow and
opens the study's store once, while the first stage starts, and keeps them for every stage.
Its threads run at a lower priority than the stages (`HUB_NICENESS`), so on a machine whose
cores all train, logging takes the time the stages leave idle.

A stage process finds the hub through the ``CP_TRACKING_HUB`` environment variable (its
socket and key), which every job the pipeline starts inherits, and sends its logging there
as plain data (`HubTracker`); the hub runs a `StageTracker` per stage on its warm store. So
every guarantee of the stage's own tracker holds: each run is logged as it finishes, a store
that is down turns tracking off for the rest of the stage with one warning (which the stage
prints), and a stage ends only once its logging is in the store -- by then the hub has done
most of it, while the stage trained. A stage that cannot reach the hub (started by hand, or
by an executor on another host) tracks in its own process, as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Optional

from ..config import PlannedRun, RunResult
from ..study import Study
from .store import Store
from .tracker import FLUSH_TIMEOUT_S, ClosingTracker, NullTracker, StageTracker, _warn

ENV_HUB = "CP_TRACKING_HUB"
"""The environment variable through which a pipeline's stages find its hub."""

HUB_NICENESS = 10
"""How much lower than the pipeline's the hub's threads run: on a machine that trains on
every core, the hub logs in the gaps (a stage waits at its end for what is left)."""

CONNECT_TIMEOUT_S = 5.0
"""How long a stage waits for the hub to answer its hello before it tracks by itself."""


def _lower_priority() -> None:
    """This thread (and the threads it starts) at `HUB_NICENESS` (Linux: niceness is per
    thread; elsewhere the thread keeps its priority)."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                       os.getpriority(os.PRIO_PROCESS, 0) + HUB_NICENESS)


class Hub:
    """The pipeline's tracking hub: a socket that stage processes send their logging to, and
    the stores it is logged into, opened once. `environ` is what a stage needs to reach it."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._listener = Listener(family="AF_UNIX", authkey=self._key)
        self._stores: dict[tuple, Store] = {}
        self._stores_lock = threading.Lock()
        self._store_ops = threading.Lock()  # one store operation at a time, across stages
        self._closed = False
        threading.Thread(target=self._serve, name="cp-tracking-hub", daemon=True).start()

    @property
    def environ(self) -> dict[str, str]:
        """The environment variable a stage process reaches the hub through."""
        return {ENV_HUB: json.dumps({"address": self._listener.address,
                                     "key": self._key.hex()})}

    def warm(self, study: Study, uri: str, experiment: str,
             hidden: Optional[dict[str, str]] = None) -> None:
        """Import mlflow and open the store now, in the background, so that the first stage
        finds them ready. A failure here is left to the stages (each warns once)."""

        def open_store() -> None:
            _lower_priority()
            with contextlib.suppress(Exception):
                self.store(study, uri, experiment, hidden)

        threading.Thread(target=open_store, name="cp-tracking-warm", daemon=True).start()

    def store(self, study: Study, uri: str, experiment: str,
              hidden: Optional[dict[str, str]] = None) -> Store:
        """The store of ``experiment`` at ``uri`` for ``study``, opened on first use."""
        key = (str(study.root.resolve()), uri, experiment,
               tuple(sorted((hidden or {}).items())))
        with self._stores_lock:
            if key not in self._stores:
                self._stores[key] = Store(uri, experiment, study, hidden)
            return self._stores[key]

    def close(self) -> None:
        """Stop taking stages (a stage still connected finishes its logging first)."""
        self._closed = True
        self._listener.close()

    def _serve(self) -> None:
        _lower_priority()  # inherited by the threads that log each stage
        while not self._closed:
            try:
                conn = self._listener.accept()
            except Exception:  # closed, or a client without the key
                if self._closed:
                    return
                continue
            threading.Thread(target=self._handle, args=(conn,), name="cp-tracking-stage",
                             daemon=True).start()

    def _tracker(self, root: str, stage: str, uri: str, experiment: str,
                 record: Optional[dict], hidden: Optional[dict[str, str]],
                 warn: Callable[[str], None]) -> StageTracker:
        study = Study(Path(root))
        return StageTracker(study, stage, uri, experiment, record, warn=warn, hidden=hidden,
                            lock=self._store_ops, logged_by="hub",
                            store=lambda: self.store(study, uri, experiment, hidden))

    def _handle(self, conn: Connection) -> None:
        """One stage: its messages, in order, into a `StageTracker` on the hub's store."""
        tracker: Optional[StageTracker] = None
        warnings: list[str] = []
        try:
            while True:
                kind, *args = conn.recv()
                if kind == "open":
                    root, stage, uri, experiment, record, hidden = args
                    tracker = self._tracker(root, stage, uri, experiment, record, hidden,
                                            warnings.append)
                    conn.send(("opened",))
                elif tracker is None:
                    return
                elif kind == "run":
                    tracker.log_run(*args)
                elif kind == "finish":
                    tracker.finish(*args)
                elif kind == "close":
                    tracker.close(*args)
                    conn.send(("closed", tracker.failed, warnings))
                    return
        except (EOFError, OSError):  # the stage is gone: log what it sent, in the background
            if tracker is not None:
                tracker.close()
        finally:
            conn.close()


class HubTracker(ClosingTracker):
    """A stage's tracker that sends its logging to the pipeline's hub (same calls as
    `StageTracker`). A hub that goes away mid-stage turns tracking off for the rest of the
    stage with one warning, as a store that goes down does."""

    def __init__(self, conn: Connection, study: Study, stage: str,
                 warn: Callable[[str], None] = _warn):
        self._conn, self.study, self.stage, self.warn = conn, study, stage, warn
        self.failed: Optional[str] = None

    def on_result(self, pr: PlannedRun, result: RunResult) -> None:
        self._send("run", pr.run_id, dict(pr.tags), pr.config.to_dict(), result.to_dict())

    def finish(self, record: Optional[dict] = None) -> None:
        self._send("finish", record)

    def close(self, timeout: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until the hub has logged everything this stage sent (at most ``timeout`` s);
        print its warning, if any; whether it all got through."""
        if self.failed is None:
            self._send("close", timeout)
        try:
            if self.failed is None:
                if not self._conn.poll(timeout + 1.0):
                    self._fail(f"TimeoutError: logging still busy after {timeout:.0f} s")
                else:
                    _, failed, warnings = self._conn.recv()
                    for w in warnings:
                        self.warn(w)
                    self.failed = failed
        except (EOFError, OSError) as e:
            self._fail(f"{type(e).__name__}: the tracking hub went away")
        finally:
            self._conn.close()
        return self.failed is None

    def _send(self, *msg: Any) -> None:
        if self.failed is not None:
            return
        try:
            self._conn.send(msg)
        except (OSError, ValueError) as e:
            self._fail(f"{type(e).__name__}: the tracking hub went away")

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            self.warn(f"cpt: warning: MLflow tracking of stage {self.stage} stopped ({reason}); "
                      f"the stage goes on without it. `cpt sync {self.study.root}` logs what "
                      "is missing.")


def connect(study: Study, stage: str, uri: str, experiment: str, record: Optional[dict],
            hidden: Optional[dict[str, str]]) -> Optional[HubTracker]:
    """The stage's tracker through the pipeline's hub, or None when there is no hub to reach
    (the stage then tracks in its own process)."""
    raw = os.environ.get(ENV_HUB)
    if not raw:
        return None
    try:
        where = json.loads(raw)
        if not Path(where["address"]).exists():
            return None  # the pipeline that started the hub is gone
        conn = Client(where["address"], family="AF_UNIX", authkey=bytes.fromhex(where["key"]))
        conn.send(("open", str(study.root.resolve()), stage, uri, experiment, record, hidden))
        if not conn.poll(CONNECT_TIMEOUT_S) or conn.recv() != ("opened",):
            conn.close()
            return None
    except Exception as e:
        print(f"cpt: note: the pipeline's tracking hub cannot be reached ({type(e).__name__}: "
              f"{e}); stage {stage} tracks in its own process", file=sys.stderr, flush=True)
        return None
    return HubTracker(conn, study, stage)


def start_hub(spec: Any, study: Study) -> Optional[Hub]:
    """The hub of a pipeline over ``spec`` (None when tracking is off), warming the study's
    store, and its address in this process's environment, which the stages inherit."""
    from ..spec import env_paths
    from .store import tracking_uri

    t = spec.tracking
    if not t.enabled:
        return None
    hub = Hub()
    hub.warm(study, tracking_uri(study, t.uri), t.experiment or spec.name, env_paths(spec))
    os.environ.update(hub.environ)
    return hub


def stage_tracker(spec: Any, study: Study, stage: str, record: Optional[dict] = None
                  ) -> StageTracker | HubTracker | NullTracker:
    """The tracker of a stage as the spec's ``tracking`` section says: through the pipeline's
    hub when there is one, else in this process."""
    from ..spec import env_paths
    from .store import tracking_uri

    t = spec.tracking
    if not t.enabled:
        return NullTracker()
    uri, experiment, hidden = tracking_uri(study, t.uri), t.experiment or spec.name, env_paths(spec)
    return (connect(study, stage, uri, experiment, record, hidden)
            or StageTracker(study, stage, uri, experiment, record, hidden=hidden))
