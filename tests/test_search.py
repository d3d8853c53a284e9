"""The per-module search space and the ask/tell interface."""

import math

import pytest

from cp.scaling import BLOCK_GROUPS, GROUPS, Scale, build_table, resolve
from cp.scaling import HPs as BaseHPs
from cp.search import RandomSearch, SearchSpace, make_searcher

TYPES = list(GROUPS)


def test_factorised_space_has_types_plus_layers_values_per_kind():
    space = SearchSpace.build(["lr", "eps"], TYPES, depth=6, per_layer=True, radius=2)
    assert space.counts() == {"lr": {"type": len(TYPES), "layer": 6},
                              "eps": {"type": len(TYPES), "layer": 6}}
    assert space.dim == 2 * (len(TYPES) + 6)
    flat = SearchSpace.build(["lr"], TYPES, depth=6, per_layer=False, radius=2)
    assert flat.dim == len(TYPES)


def test_a_point_maps_to_type_times_layer_multipliers():
    space = SearchSpace.build(["lr"], ["attn_q", "embedding"], depth=2, per_layer=True,
                              radius=3)
    x = [1.0, -1.0, 0.5, 2.0]  # attn_q, embedding, layer 0, layer 1
    mult = space.multipliers(x)
    base = Scale(64, 2, 8, 10_000, 32)
    s = {(g.group, g.layer): g for g in resolve(build_table("completed_p"), base, base,
                                                BaseHPs(), mult)}
    assert s["attn_q", 0].lr == pytest.approx(3e-3 * 2 * 2 ** 0.5)
    assert s["attn_q", 1].lr == pytest.approx(3e-3 * 2 * 4)
    assert s["embedding", None].lr == pytest.approx(3e-3 / 2)   # no layer factor
    assert s["mlp_up", 1].lr == pytest.approx(3e-3 * 4)          # layer factor only
    assert all(g in GROUPS for g in mult.per_type["lr"])
    assert set(BLOCK_GROUPS) >= {"attn_q"}


def test_random_search_starts_at_the_global_optimum_and_stays_in_bounds():
    space = SearchSpace.build(["lr"], TYPES, depth=4, per_layer=True, radius=1.5)
    s = RandomSearch(space, seed=0)
    first = s.ask()
    assert first.x == space.center()
    for _ in range(50):
        assert space.contains(s.ask().x)


def test_state_round_trip_resumes_exactly():
    space = SearchSpace.build(["lr"], TYPES, depth=2, per_layer=True, radius=2)
    a = make_searcher("random", space, seed=3)
    for _ in range(4):
        t = a.ask()
        a.tell(t.id, float(sum(t.x)))
    pending = a.ask()
    b = make_searcher("random", space, seed=3)
    b.load_state_dict(a.state_dict())
    assert [t.to_dict() for t in b.trials] == [t.to_dict() for t in a.trials]
    assert b.trials[pending.id].pending
    assert b.ask().x == a.ask().x   # the same next proposal


def test_diverged_trials_count_as_infinite_loss():
    space = SearchSpace.build(["lr"], ["attn_q"], depth=1, per_layer=False, radius=1)
    s = RandomSearch(space)
    t0, t1 = s.ask(), s.ask()
    s.tell(t0.id, math.nan)
    s.tell(t1.id, 3.0)
    assert s.trials[t0.id].loss == math.inf and s.best().id == t1.id


def test_loading_state_of_another_space_is_refused():
    a = RandomSearch(SearchSpace.build(["lr"], ["attn_q"], 1, False, 1))
    b = RandomSearch(SearchSpace.build(["lr"], ["attn_k"], 1, False, 1))
    with pytest.raises(ValueError, match="another algorithm or space"):
        b.load_state_dict(a.state_dict())
