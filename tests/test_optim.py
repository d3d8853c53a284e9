"""AdamW param groups carry the resolved settings; the schedule is a function of run fraction."""

import dataclasses
import itertools

import pytest

from cp.model import GPT
from cp.optim import build_optimizer, param_groups
from cp.schedule import ScheduleConfig, lr_factor


def test_every_parameter_gets_its_groups_resolved_settings(tiny):
    base = tiny()
    run = dataclasses.replace(base, scale=dataclasses.replace(base.scale, width=128, depth=4))
    settings = run.settings()
    model = GPT(run.model_config(256), settings)
    by_key = {(s.group, s.layer): s for s in settings}
    groups = param_groups(model.tagged_parameters(), settings)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    for g in groups:
        for group, layer, _ in g["cp_members"]:
            s = by_key[group, layer]
            assert (g["lr"], g["eps"], g["betas"], g["weight_decay"]) == (
                s.lr, s.eps, (s.beta1, s.beta2), s.weight_decay)
    # Identical settings share a torch group: far fewer groups than (group, layer) pairs.
    assert len(groups) < len(by_key)


def test_scheduler_scales_every_group_by_the_same_factor(tiny):
    run = tiny()
    settings = run.settings()
    model = GPT(run.model_config(256), settings)
    opt, sched = build_optimizer(model.tagged_parameters(), settings, ScheduleConfig(warmup=0.1),
                                 100)
    peaks = [g["initial_lr"] for g in opt.param_groups]
    for step in range(30):
        factor = lr_factor(step, 100, ScheduleConfig(warmup=0.1))
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([p * factor for p in peaks])
        opt.step()
        sched.step()


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_schedule_warms_up_peaks_and_ends_at_final_lr(decay):
    sched = ScheduleConfig(warmup=0.1, decay=decay, final_lr=0.1)
    f = [lr_factor(s, 200, sched) for s in range(200)]
    assert f[0] == pytest.approx(1 / 20) and f[19] == pytest.approx(1.0)
    assert max(f) == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(f[20:]))  # monotone decay


def test_schedule_shape_is_the_same_fraction_of_any_horizon():
    sched = ScheduleConfig(warmup=0.05, decay="cosine", final_lr=0.0)
    for frac in (0.05, 0.3, 0.5, 0.8):
        short = lr_factor(round(frac * 400) - 1, 400, sched)
        long = lr_factor(round(frac * 4000) - 1, 4000, sched)
        assert short == pytest.approx(long, abs=0.01)


def test_warmup_stable_decay_holds_the_peak_until_the_decay_fraction():
    sched = ScheduleConfig(warmup=0.0, decay="linear", decay_fraction=0.2, final_lr=0.0)
    f = [lr_factor(s, 100, sched) for s in range(100)]
    assert f[:80] == [1.0] * 80 and f[-1] == 0.0


def test_constant_schedule_after_warmup():
    sched = ScheduleConfig(warmup=0.1, decay="constant")
    assert [lr_factor(s, 50, sched) for s in range(5, 50)] == [1.0] * 45

