"""The search comparison: progress towards the optimum on a trace, summaries over seeds, the
contenders (the random baseline must not be degenerate), and the section rendered from the
benchmark's JSON."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cp.doc import Doc, Findings
from cp.search.compare import (
    CONTENDERS,
    Reach,
    closed_after,
    comparison_section,
    gap_closed,
    make_contender,
    paired_verdict,
    synthetic_run,
    synthetic_space,
    trials_to_fraction,
    unpaired_verdict,
)
from cp.search.synthetic import CliffLandscape
from cp.stages.search import search_comparison_section

FIXTURE = Path(__file__).parent / "data" / "search_comparison.json"

# After 2, 4, 8, 12 and 16 trials the recommended point's loss; start 1.5, optimum 1.0.
TRACE = [(2, 1.5), (4, 1.3), (8, 1.05), (12, 1.2), (16, 1.0)]


def test_trials_to_fraction_on_a_hand_made_trace():
    assert trials_to_fraction(TRACE, 1.5, 1.0, 0.4) == 4     # 1.3 closes 40% exactly
    assert trials_to_fraction(TRACE, 1.5, 1.0, 0.5) == 8     # 1.3 is not enough, 1.05 is
    assert trials_to_fraction(TRACE, 1.5, 1.0, 0.9) == 8     # 0.45 / 0.5, despite rounding
    assert trials_to_fraction(TRACE, 1.5, 1.0, 0.99) == 16   # a later step back changes nothing
    assert trials_to_fraction(TRACE[:4], 1.5, 1.0, 0.99) is None
    assert trials_to_fraction(list(reversed(TRACE)), 1.5, 1.0, 0.5) == 8  # order of entries


def test_gap_closed_after_n_trials_is_the_last_round_told_by_then():
    assert closed_after(TRACE, 1.5, 1.0, 1) == 0.0            # nothing told yet: the start
    assert closed_after(TRACE, 1.5, 1.0, 10) == pytest.approx(0.9)
    assert closed_after(TRACE, 1.5, 1.0, 12) == pytest.approx(0.6)   # recommended got worse
    assert gap_closed(1.5, 1.0, math.inf) == -math.inf
    with pytest.raises(ValueError, match="no gap"):
        gap_closed(1.0, 1.0, 1.0)


def test_reach_over_seeds_counts_never_as_infinitely_many_trials():
    some = Reach((10, None, 30))
    assert (some.reached, some.median, some.low, some.high) == (2, 30, 10, math.inf)
    assert some.cell() == "2/3: 30 (10–never)"
    assert Reach((None, None, 5)).cell() == "1/3: never (5–never)"
    assert Reach((None, None)).cell() == "0/2: never"


def test_verdicts_decide_only_what_the_seeds_support():
    always = paired_verdict("a", [10.0] * 10, "b", [20.0] * 10)
    assert always.decided and always.text("seeds").startswith("a beats b (10 vs 0 seeds")
    few = paired_verdict("a", [10.0] * 4, "b", [20.0] * 4)   # 4 of 4: p = 0.125
    assert not few.decided and few.text("seeds").startswith("cannot tell a from b")
    same = paired_verdict("a", [10.0, math.inf], "b", [10.0, math.inf])
    assert not same.decided and same.a_better == same.b_better == 0
    apart = unpaired_verdict("a", [1.0, 2.0, 3.0, 4.0, 5.0], "b", [6.0, 7.0, 8.0, 9.0, 10.0])
    assert apart.decided and apart.text("").startswith("a beats b")
    mixed = unpaired_verdict("a", [1.0, 4.0, 5.0], "b", [2.0, 3.0, 6.0])
    assert not mixed.decided


def test_the_random_baseline_improves_on_its_start_point_in_most_seeds():
    # With 16 factors, random search's points must land where improvements are: most seeds
    # end better than the start point within a few dozen trials.
    runs = [synthetic_run("random-local", 16, s, budget=40, parallel=2) for s in range(10)]
    improved = [r for r in runs if r["trace"][-1][1] < r["start"]]
    assert len(improved) >= 8, [r["trace"][-1][1] - r["start"] for r in runs]
    assert sum(r["diverged"] for r in runs) == 0   # its box stays below the cliff here


def test_uniform_proposals_over_the_whole_box_never_beat_the_start_in_16_dimensions():
    # Why the baseline above exists: the search stage's `algorithm: random` draws from the
    # whole +-2 box, where in 16 dimensions almost every point is far worse than the start.
    runs = [synthetic_run("random-box", 16, s, budget=40, parallel=2) for s in range(5)]
    assert sum(r["improved"] for r in runs) == 0
    assert sum(r["diverged"] for r in runs) > 0


def test_a_landscape_and_a_searcher_with_the_same_seed_draw_unrelated_numbers():
    # Before, both seeded numpy with the same integer: random search's first point on
    # landscape s with search seed s was the optimum scaled by radius / 0.6.
    for s in range(5):
        f = CliffLandscape(16, seed=s)
        searcher = make_contender("random-local", synthetic_space(16, 2.0), seed=s)
        searcher.ask()                                   # the start point
        first = np.asarray(searcher.ask().x)
        ratio = first[2:] / f.optimum[2:]
        assert np.ptp(ratio) > 0.1, s


def test_every_contender_is_driven_to_the_same_budget():
    for name in CONTENDERS:
        run = synthetic_run(name, 6, 0, budget=14, parallel=2)
        ns = [n for n, _ in run["trace"]]
        assert ns == sorted(ns) and ns[-1] == 14, name
        assert run["explored"] <= 14
    with pytest.raises(ValueError, match="unknown contender"):
        make_contender("grid", synthetic_space(2, 1.0), 0)


def render(data: dict) -> str:
    doc = Doc("Search algorithms compared")
    comparison_section(doc, data, level=1)
    return doc.markdown(Path("."))


def test_the_section_renders_its_tables_and_reading_from_the_json():
    md = render(json.loads(FIXTURE.read_text()))
    assert "Run 2026-01-02 on a test machine, 2 cores, commit abc1234" in md
    assert "load average 0.1 at the start and 0.3 at the end" in md
    assert "| random-local | uniform in a box of half-width 0.5 around the start point |" in md
    # synthetic: trials to 50/90/99% (reached/seeds: median (range)), gap closed at n=8, 16
    assert ("| trrs | 4/4: 6 (4–8) | 3/4: 16 (8–never) | 1/4: never (16–never) | 75% | 91% "
            "| 18/48 | 1/48 |") in md
    assert "| random-local | 0/4: never | 0/4: never | 0/4: never |" in md
    assert ("cannot tell trrs from random-local (4 vs 0 landscapes; sign test p = 0.12)"
            in md)
    # the proxy: gap from the start's 3.0 to the best reached, 2.5
    assert "to the lowest seed-0 loss any contender's recommended point reached" in md
    # (the contender that reached the best loss closes 100% of the gap by definition)
    assert ("| trrs | 3/3: 10 (6–10) | 1/3: never (10–never) | 1/3: never (10–never) | 40% "
            "| 80% | 7/18 | 1/18 |") in md
    assert "random-local is degenerate here: none of its 30 explored trials" in md
    assert "| trrs | 0.1500 (0.1000 to 0.2000) | 3/3 |" in md
    assert "largest for trrs: 0.150 nats (range 0.100 to 0.200 over 3 search seeds)" in md
    assert "random-local: its recommended point beats the start point on fresh seeds for 0 of 3" \
        in md


def test_the_report_takes_the_section_and_its_claim_through_the_stage():
    doc, found = Doc("report"), Findings()
    search_comparison_section(doc, json.loads(FIXTURE.read_text()), level=2, found=found)
    assert [c["claim"] for c in found.claims] == ["search_comparison"]
    assert found.metrics["search_comparison.trrs.fresh_gain"] == pytest.approx(0.15)


def test_a_comparison_from_an_older_benchmark_is_named_not_misread():
    md = render({"date": "2026-11-22", "real": {"algorithms": {}}})
    assert "older version of benchmarks/search_comparison.py" in md


def test_a_recommended_point_that_diverges_on_a_fresh_seed_is_shown_as_diverged():
    data = json.loads(FIXTURE.read_text())
    data["real"]["runs"]["trrs"][0]["fresh"][1] = math.inf
    md = render(data)
    assert "| trrs | 0.1000 (diverged to 0.1500) | 2/3 |" in md
