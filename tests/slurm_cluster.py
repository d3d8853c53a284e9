"""A real single-node SLURM cluster on localhost for the tests: scripts/slurm-up.sh installs
slurmctld, slurmd and munge (Debian packages) if missing and starts them; scripts/slurm-down.sh
stops them. A cluster that is already up (started by hand) is used and left running."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).parent.parent
UP, DOWN = REPO / "scripts" / "slurm-up.sh", REPO / "scripts" / "slurm-down.sh"
PARTITION = "debug"  # the partition slurm-up.sh defines


class ClusterUnavailable(Exception):
    """The daemons cannot be started here; the message says why."""


def queue_answers() -> bool:
    """Whether a SLURM controller answers on this machine."""
    if shutil.which("squeue") is None:
        return False
    try:
        return subprocess.run(["squeue", "-h"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def local_cluster() -> Iterator[None]:
    """A running single-node cluster for the duration of the block."""
    if queue_answers():
        yield
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("starting SLURM's daemons needs root; run the tests as root "
                                 "or start a cluster first (scripts/slurm-up.sh)")
    try:
        up = subprocess.run([str(UP)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ClusterUnavailable(f"{UP.name} did not finish: {e}") from None
    if up.returncode != 0 or not queue_answers():
        raise ClusterUnavailable(f"{UP.name} failed (exit {up.returncode}):\n"
                                 f"{(up.stdout + up.stderr)[-1500:]}")
    try:
        yield
    finally:
        subprocess.run([str(DOWN)], capture_output=True, timeout=120, check=False)
