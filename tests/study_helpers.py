"""A real MLflow tracking server for tests, and the smoke study run through Snakemake against
it with the server stopped part-way (shared by the tracking and report tests)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).parent.parent
SMOKE = REPO / "specs" / "smoke.yaml"


def smoke_spec(**changes):
    """specs/smoke.yaml with ``changes`` (``sweeps__grid={...}`` sets sweeps.grid), run inline
    in the test's process."""
    import json

    import yaml

    from cp.spec import build_spec

    raw = yaml.safe_load(SMOKE.read_text())
    raw = json.loads(json.dumps(raw))
    for dotted, value in changes.items():
        node = raw
        *path, last = dotted.split("__")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    raw["launcher"] = {"kind": "inline"}
    return build_spec(raw)


def quiet(_: str) -> None:
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 over a sqlite file; start() waits until it is healthy."""

    def __init__(self, db: Path, artifacts: Path, log: Path):
        self.db, self.artifacts, self.log = db, artifacts, log
        self.proc = None
        self.port = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> "MlflowServer":
        self.port = free_port()
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                 f"sqlite:///{self.db}", "--artifacts-destination", str(self.artifacts),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the server and its workers (its own process group, which start() made)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow, so a test's .snakemake and results stay out of the repo."""
    for name in ("Snakefile", "workflow", "profiles", "specs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


@dataclass
class TrackedStudy:
    """What the interrupted-tracking scenario left behind."""

    workdir: Path
    study: Path
    server: MlflowServer
    pipeline_rc: int = 0
    pipeline_out: str = ""
    live_parents: dict = field(default_factory=dict)
    """Stage parents seen while the first server was up: stage -> run."""
    live_children: dict = field(default_factory=dict)
    """Training runs seen then: (stage, run id) -> (run, its val_loss history)."""
    sync_out: list = field(default_factory=list)
    """(exit code, output) of each `cpt sync`."""
    runs_after_sync: list = field(default_factory=list)
    """Number of runs in the experiment after each sync."""


def cpt(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "cp.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
