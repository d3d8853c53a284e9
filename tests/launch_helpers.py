"""Run functions for launcher tests. They live in a module (not a test function) so that the
launcher's spawned worker processes can import them."""

import os

from cp.config import RunConfig, RunResult
from cp.execute import execute, log_event
from cp.study import RunFolder

CRASH_LR = 0.0123   # a run with this lr raises before training
DIE_LR = 0.0456     # a run with this lr kills its worker process


def crashing(cfg: RunConfig, run_dir: RunFolder, threads: int = 0) -> RunResult:
    if cfg.hps.lr == CRASH_LR:
        raise RuntimeError("injected crash")
    if cfg.hps.lr == DIE_LR:  # like an out-of-memory kill in the middle of training
        log_event(run_dir, "start")
        os._exit(3)
    return execute(cfg, run_dir, threads)


def dies_before_starting(cfg: RunConfig, run_dir: RunFolder, threads: int = 0) -> RunResult:
    os._exit(4)


def records_pid(cfg: RunConfig, run_dir: RunFolder, threads: int = 0) -> RunResult:
    """Trains, after noting which process (and whether torch._dynamo was already imported
    there: a warm worker imported it before its first run) in the run's folder."""
    import sys

    run_dir.path.mkdir(parents=True, exist_ok=True)
    (run_dir.path / "pid").write_text(f"{os.getpid()} {int('torch._dynamo' in sys.modules)}")
    return crashing(cfg, run_dir, threads)
