"""Shared fixtures: an isolated corpus cache and tiny run configs that train in seconds."""

import dataclasses

import pytest

from cp.config import ArchConfig, RunConfig, TrainConfig
from cp.scaling import HPs, Scale


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tokenised corpora go to a fresh cache, so tests never depend on a user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CP_CACHE_DIR", str(tmp_path_factory.mktemp("cp-cache")))
    yield
    mp.undo()


TINY = Scale(width=32, depth=2, batch=8, tokens=8 * 32 * 40, seq_len=32)


def tiny_run(**changes) -> RunConfig:
    """A 40-step run of a 2-block, width-32 model (about a second on a CPU)."""
    cfg = RunConfig(scale=TINY, base_scale=TINY, arch=ArchConfig(head_dim=16),
                    hps=HPs(lr=1e-2), train=TrainConfig(evals=4, eval_sequences=16,
                                                        log_every=5))
    cfg.runtime.checkpoint_seconds = 0
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
def tiny():
    return tiny_run


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node SLURM cluster (tests/slurm_cluster.py), up for the whole session."""
    from tests.slurm_cluster import ClusterUnavailable, local_cluster

    cluster = local_cluster()
    try:
        cluster.__enter__()
    except ClusterUnavailable as e:
        pytest.skip(f"SLURM TESTS NOT RUN -- the local cluster cannot start: {e}")
    yield
    cluster.__exit__(None, None, None)
