"""The per-module search space and the ask/tell interface."""

import json
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


def test_a_point_maps_to_type_times_layer_factors():
    space = SearchSpace.build(["lr"], ["attn_q", "embedding"], depth=2, per_layer=True,
                              radius=3)
    x = [1.0, -1.0, 0.5, 2.0]  # attn_q, embedding, layer 0, layer 1
    mult = space.factors(x)
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


# ---------------------------------------------------------------------------------------------
# Trust-region random search.

from cp.search import TRRS, TRRSConfig  # noqa: E402
from cp.search.driver import drive as run_search  # noqa: E402
from cp.search.space import Dim  # noqa: E402
from cp.search.synthetic import CliffLandscape  # noqa: E402


def box(dim, radius=2.0):
    return SearchSpace(tuple(Dim("lr", "type", f"g{i}") for i in range(dim)), radius)


def drive(searcher, objective, budget, batch=4):
    """The stage's loop (cp.search.driver) on a synthetic objective."""
    run_search(searcher, lambda trials: [objective(t.x, t.seed) for t in trials], budget, batch)


def test_trrs_never_proposes_outside_the_bounds():
    space = box(6, radius=1.0)
    s = TRRS(space, seed=0, config=TRRSConfig(init_radius=0.9, grow=3.0))
    # The best point is the box's corner: the search is pushed into the bounds.
    drive(s, lambda x, seed: -sum(x), 200)
    assert all(space.contains(t.x) for t in s.trials)
    assert max(h["radius"] for h in s.history) == space.radius  # grew to the bounds, no more
    assert s.recommend()[0] == pytest.approx([1.0] * 6, abs=0.05)  # into the corner


def test_trrs_starts_at_the_global_optimum_and_shrinks_after_a_failed_round():
    s = TRRS(box(4), config=TRRSConfig(init_radius=0.8, shrink=0.5, round_size=3,
                                       reeval_seeds=2))
    center = [s.ask() for _ in range(3)]                # the centre, on 3 seeds ...
    assert all(t.x == [0.0] * 4 for t in center) and len({t.seed for t in center}) == 3
    assert s.ask() is None                              # ... whose losses it waits for
    for t in center:
        s.tell(t.id, 1.0)
    round_ = [s.ask() for _ in range(3)]
    assert s.ask() is None                              # waits for the whole round
    for t in round_:
        s.tell(t.id, 2.0)                               # all worse: a failed round
    nxt = s.ask()
    assert s.radius == pytest.approx(0.4) and nxt.purpose == "explore"
    assert s.recommend()[0] == [0.0] * 4                # the incumbent did not move


def landscape_with_lucky_seed(true_gain):
    """Candidates away from the centre look 0.1 better on the exploration seed (0) and are
    `true_gain` better on every other seed."""
    def f(x, seed):
        away = any(v != 0 for v in x)
        if not away:
            return 1.0
        return 1.0 - (0.1 if seed == 0 else true_gain)
    return f


def test_trrs_moves_only_on_a_re_evaluated_improvement():
    lucky = TRRS(box(3), config=TRRSConfig(round_size=2, reeval_seeds=2))
    drive(lucky, landscape_with_lucky_seed(true_gain=-0.05), budget=3 + 2 + 2)
    purposes = [t.purpose for t in lucky.trials]
    assert purposes.count("reeval") == 2 + 2            # the centre's, then the challenger's
    assert lucky.recommend()[0] == [0.0] * 3             # worse on fresh seeds: stays put
    assert lucky.radius < TRRSConfig().init_radius       # and counts it as a failure

    real = TRRS(box(3), config=TRRSConfig(round_size=2, reeval_seeds=2))
    drive(real, landscape_with_lucky_seed(true_gain=0.05), budget=3 + 2 + 2)
    assert real.recommend()[0] != [0.0] * 3              # better on fresh seeds: moves
    assert real.radius > TRRSConfig().init_radius and real.moves == 1


def test_trrs_treats_diverged_candidates_as_failures():
    s = TRRS(box(2), config=TRRSConfig(round_size=2))
    drive(s, lambda x, seed: 1.0 if x == [0.0, 0.0] else math.inf, budget=3 + 2 + 2)
    assert s.recommend() == ([0.0, 0.0], 1.0) and s.moves == 0


def test_trrs_state_round_trip_continues_identically():
    f = CliffLandscape(5, seed=2)
    a = TRRS(box(5), seed=4)
    drive(a, f, 23, batch=3)
    b = TRRS(box(5), seed=4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    drive(a, f, 60, batch=3)
    drive(b, f, 60, batch=3)
    assert [t.to_dict() for t in a.trials] == [t.to_dict() for t in b.trials]


def trials_to_within(searcher, f, budget, tolerance=0.01, batch=4):
    """Trials until the searcher's recommended point is within `tolerance` of the optimum
    loss (noise-free), or None."""
    while len(searcher.trials) < budget:
        drive(searcher, f, min(budget, len(searcher.trials) + batch), batch)
        rec = searcher.recommend()
        if rec and f.true_loss(rec[0]) <= (1 + tolerance) * f.optimum_loss:
            return len(searcher.trials)
    return None


def test_trrs_reaches_within_1_percent_of_a_cliff_edged_optimum_before_random_search():
    f = CliffLandscape(dim=8, seed=1)
    t_trrs = trials_to_within(TRRS(box(8), seed=0), f, budget=300)
    t_random = trials_to_within(RandomSearch(box(8), seed=0), f, budget=300)
    assert t_trrs is not None, "TRRS did not get within 1% of the optimum in 300 trials"
    assert t_random is None or t_trrs < t_random


@pytest.mark.parametrize("algorithm", ["random", "trrs", "tpe", "cmaes"])
def test_every_algorithm_runs_through_the_same_interface(algorithm, tmp_path):
    f = CliffLandscape(4, seed=0)
    s = make_searcher(algorithm, box(4), seed=1, journal=tmp_path / "optuna.journal")
    drive(s, f, 24, batch=4)
    assert len(s.trials) == 24 and s.trials[0].x == [0.0] * 4
    x, loss = s.recommend()
    assert box(4).contains(x) and math.isfinite(loss)
    assert f.true_loss(x) <= f.true_loss([0.0] * 4) + 0.01  # no worse than where it started


@pytest.mark.parametrize("algorithm", ["tpe", "cmaes"])
def test_optuna_searchers_resume_their_study_from_the_journal(algorithm, tmp_path):
    f = CliffLandscape(3, seed=0)
    a = make_searcher(algorithm, box(3), seed=1, journal=tmp_path / "optuna.journal")
    drive(a, f, 12, batch=4)
    pending = a.ask()
    b = make_searcher(algorithm, box(3), seed=1, journal=tmp_path / "optuna.journal",
                      resume=True)  # as a new process would
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert len(b.study.trials) == 13                    # Optuna's own record came back
    b.tell(pending.id, f(pending.x, pending.seed))      # the in-flight trial can be told
    assert b.study.trials[-1].state.name == "COMPLETE"
    drive(b, f, 20, batch=4)
    assert len(b.trials) == 20


def test_a_new_optuna_search_does_not_continue_an_old_journal(tmp_path):
    f = CliffLandscape(3, seed=0)
    first = make_searcher("tpe", box(3), seed=1, journal=tmp_path / "optuna.journal")
    drive(first, f, 12)
    again = make_searcher("tpe", box(3), seed=1, journal=tmp_path / "optuna.journal")  # anew
    drive(again, f, 12)
    assert len(again.study.trials) == 12
    assert [t.x for t in again.trials] == [t.x for t in first.trials]  # same seed, same search
