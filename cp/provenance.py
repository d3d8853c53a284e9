"""Who ran a stage, with which code, and when: the record each stage leaves in its folder
(`cp.study.Study.stage_record`). Tracking tags its MLflow runs from it, so `cpt sync` can tag
a study logged long after it ran with the commit that actually ran it."""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Optional


def _git(*args: str) -> Optional[subprocess.CompletedProcess]:
    # The package's own checkout, not the working directory: that is the code that runs.
    here = Path(__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> Optional[str]:
    """The commit of the checkout cp runs from (None outside a git checkout), with a
    ``-dirty`` suffix when tracked files have uncommitted changes. $CP_GIT_COMMIT wins: for
    code deployed without its .git folder."""
    if os.environ.get("CP_GIT_COMMIT"):
        return os.environ["CP_GIT_COMMIT"]
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return None
    diff = _git("diff", "--quiet", "HEAD", "--")
    dirty = diff is not None and diff.returncode == 1
    return head.stdout.strip() + ("-dirty" if dirty else "")


@functools.lru_cache(maxsize=1)
def machine() -> str:
    """The machine in words: CPU model and cores, GPUs (from nvidia-smi), torch and Python
    versions."""
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores"]
    try:  # nvidia-smi answers without importing torch (this runs in light processes too)
        gpus = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.split("\n")
        gpus = [g.strip() for g in gpus if g.strip()]
        if gpus:
            parts.append(f"{len(gpus)} x {gpus[0]}")
    except (OSError, subprocess.SubprocessError):
        pass
    with contextlib.suppress(metadata.PackageNotFoundError):
        parts.append(f"torch {metadata.version('torch')}")
    parts.append(f"Python {platform.python_version()}")
    return ", ".join(parts)


def stage_record(stage: str, status: str, started: float,
                 finished: Optional[float] = None, error: Optional[str] = None) -> dict[str, Any]:
    """The provenance of one execution of ``stage`` (status: running, done or failed)."""
    from . import __version__

    return {"stage": stage, "status": status, "started": started, "finished": finished,
            "error": error, "git_commit": git_commit(), "cp_version": __version__,
            "host": socket.gethostname(), "machine": machine(), "pid": os.getpid(),
            "recorded": time.time()}
