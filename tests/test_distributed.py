"""Data-parallel training: a 2-process gloo run on CPU keeps the global batch, so its losses are
a single-process run's (up to the order of float sums)."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from cp.execute import train_local
from cp.spec import load_spec
from cp.train import train
from tests.conftest import TINY

SMOKE = Path(__file__).parent.parent / "specs" / "smoke.yaml"
TOL = 1e-5  # relative: the ranks' partial means are summed in another order


@pytest.fixture
def one_thread():
    """Both sides of a comparison on one torch thread per process."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_losses(single, parallel, exact_steps=None):
    """Train losses agree to float rounding (``TOL``) for the first ``exact_steps`` steps
    (all: None), and so does every evaluation when ``exact_steps`` is None. The ranks sum their
    rows' gradients in another order than one process does; over a long run training amplifies
    that 1e-7 rounding into seed-like noise (so does a 1e-7 nudge to one initial weight of a
    single-process run), so long runs are checked tightly only at their start."""
    assert parallel.status == single.status == "completed"
    assert parallel.steps == single.steps and parallel.tokens == single.tokens
    assert [s for s, _ in parallel.train_curve] == [s for s, _ in single.train_curve]
    for (step, a), (_, b) in zip(single.train_curve, parallel.train_curve, strict=True):
        if exact_steps is None or step <= exact_steps:
            assert math.isclose(a, b, rel_tol=TOL), (step, a, b)
    assert [e["step"] for e in parallel.eval_curve] == [e["step"] for e in single.eval_curve]
    if exact_steps is None:
        for a, b in zip(single.eval_curve, parallel.eval_curve, strict=True):
            assert math.isclose(a["val_loss"], b["val_loss"], rel_tol=TOL), (a, b)


@pytest.mark.slow
def test_a_two_process_gloo_target_matches_a_single_process_run(tmp_path, one_thread):
    cfg = load_spec(SMOKE).run_config("target")
    cfg.train.log_every = 1
    single = train(cfg)
    parallel = train_local(cfg, tmp_path, world=2)
    # A wrong split (ranks on the same rows, unsynchronised gradients, a mis-scaled mean)
    # moves the first steps' losses far above 1e-5; rounding alone stays near 1e-7 there.
    assert_same_losses(single, parallel, exact_steps=16)
    # By the end, amplified rounding is all that separates them: far less than another seed.
    other_seed = train(dataclasses.replace(cfg, seed=cfg.seed + 1))
    seed_gap = abs(other_seed.final_val_loss - single.final_val_loss)
    assert abs(parallel.final_val_loss - single.final_val_loss) < 0.25 * seed_gap, (
        single.final_val_loss, parallel.final_val_loss, other_seed.final_val_loss)
    assert parallel.run_id == cfg.run_id()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "result.json"]


def test_an_uneven_split_of_the_batch_still_gives_the_global_mean(tmp_path, tiny, one_thread):
    cfg = tiny(scale=dataclasses.replace(TINY, batch=5, tokens=5 * 32 * 40))  # ranks: 3 + 2 rows
    assert_same_losses(train(cfg), train_local(cfg, tmp_path, world=2))


def test_more_ranks_than_sequences_is_refused_with_the_fix(tmp_path, tiny):
    cfg = tiny(scale=dataclasses.replace(TINY, batch=1, tokens=32 * 40))
    with pytest.raises(Exception, match="cannot be split over 2 data-parallel ranks"):
        train_local(cfg, tmp_path, world=2)
