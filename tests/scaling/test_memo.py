"""Resolving once per distinct input: a cached resolution equals a fresh one, the key tells
apart every input resolve reads (a value changed in place, -0.0 from 0.0), and the faster run
id is the id of the resolved config."""

import dataclasses
import random

import pytest

from cp.config import ArchConfig, RunConfig, run_id_of
from cp.scaling import TABLES, Factors, HPs, Scale, build_table, memo, resolve

BASE = Scale(width=64, depth=2, batch=16, tokens=2_000_000, seq_len=128)


def random_inputs(rng):
    scale = Scale(width=64 * rng.choice([1, 2, 4]), depth=rng.choice([1, 2, 3, 6]),
                  batch=rng.choice([8, 16, 64]), tokens=rng.choice([10**6, 4 * 10**6]),
                  seq_len=rng.choice([64, 128]))
    hps = HPs(lr=rng.choice([1e-3, 3e-3]), weight_decay=rng.choice([0.0, 0.1]),
              groups={"qk_norms": {"eps": 1e-6}} if rng.random() < 0.5 else {})
    factors = Factors(per_type={"lr": {"hidden": rng.choice([0.5, 2.0])}},
                      per_layer={"lr": [1.0, rng.choice([0.5, 1.5])]})
    return build_table(rng.choice(sorted(TABLES))), scale, hps, factors


def test_a_cached_resolution_equals_a_fresh_one():
    rng = random.Random(0)
    memo.clear()
    inputs = [random_inputs(rng) for _ in range(40)]
    for _ in range(2):  # the second pass hits the cache
        for table, scale, hps, factors in inputs:
            assert memo.resolve_once(table, BASE, scale, hps, factors) == \
                resolve(table, BASE, scale, hps, factors)


def test_a_value_changed_in_place_is_a_new_key():
    table = build_table("completed_p")
    scale = dataclasses.replace(BASE, width=256)
    hps = HPs()
    before = memo.resolve_once(table, BASE, scale, hps)
    hps.groups["hidden"] = {"lr": 1e-2}  # mutable dataclass, changed after the first call
    after = memo.resolve_once(table, BASE, scale, hps)
    assert after == resolve(table, BASE, scale, hps) and after != before


def test_minus_zero_and_zero_resolve_apart():
    table = build_table("completed_p")
    scale = dataclasses.replace(BASE, width=256)
    plus = memo.resolve_once(table, BASE, scale, HPs(weight_decay=0.0))
    minus = memo.resolve_once(table, BASE, scale, HPs(weight_decay=-0.0))
    assert [repr(s.weight_decay) for s in minus] == \
        [repr(s.weight_decay) for s in resolve(table, BASE, scale, HPs(weight_decay=-0.0))]
    assert [repr(s.weight_decay) for s in plus] != [repr(s.weight_decay) for s in minus]


@pytest.mark.parametrize("cls", [HPs, Factors, Scale])
def test_the_key_sees_every_field(cls):
    """The key is the inputs' repr: a field left out of it would make two inputs collide."""
    assert all(f.repr for f in dataclasses.fields(cls))


def test_the_fast_run_id_is_the_id_of_the_resolved_config():
    rng = random.Random(1)
    for _ in range(30):
        table, scale, hps, factors = random_inputs(rng)
        cfg = RunConfig(scale=scale, base_scale=BASE, hps=hps, factors=factors,
                        seed=rng.randrange(5), stream=rng.choice(["choose", "judge"]),
                        arch=ArchConfig(mlp=rng.choice(["swiglu", "gelu"]),
                                        qk_norm=rng.random() < 0.5))
        cfg.parameterisation.name = table.name
        assert cfg.run_id() == run_id_of(cfg.resolved())
