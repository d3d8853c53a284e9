"""The per-module searchers compared at an equal budget: who competes (and what each one
proposes), how far each gets towards the optimum after n trials, and the document section that
shows it. benchmarks/search_comparison.py runs the comparison and writes its JSON; a study's
report and docs/search-comparison.md render that JSON with `comparison_section`.

Progress is measured on the *recommended* point, the one a searcher would hand over if it were
stopped after n trials (TRRS: its incumbent; the others: their best trial), as the fraction of
the gap between the start point (the global optimum, every factor 1) and the optimum it has
closed:

    gap closed = (loss(start) - loss(recommended)) / (loss(start) - loss(optimum))

On the synthetic landscape the losses are noise-free and the optimum is known, so the gap is
exact. On a real proxy both are single-seed losses on the exploration seed and the optimum is
the best any contender reached: that is in-sample, which is why the benchmark also trains each
final recommended point on fresh seeds no contender searched with.

Every number in the section's reading is computed here from the data; where the seeds do not
separate two contenders the text says "cannot tell".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..doc import Doc, Findings, fmt
from .base import Searcher, Trial
from .driver import Evaluate, drive
from .space import Dim, SearchSpace
from .synthetic import CliffLandscape
from .trrs import TRRSConfig

#: Fractions of the gap between the start point and the optimum whose first crossing is
#: reported.
FRACTIONS = (0.5, 0.9, 0.99)

#: Significance level of the comparisons between contenders (two-sided): below it the reading
#: says which is faster or better, above it "cannot tell".
ALPHA = 0.05

#: Version of the comparison's JSON; older files are named as such, not misread.
FORMAT = 2

#: The contenders, in the order tables list them. ``random-local`` is the random baseline the
#: comparison's reading is about; ``random-box`` is the search stage's ``algorithm: random``,
#: kept to show why uniform proposals over the whole box degenerate in many dimensions.
CONTENDERS = ("trrs", "random-local", "random-box", "tpe", "cmaes")


def proposals(name: str, space_radius: float, trrs: TRRSConfig) -> str:
    """What contender ``name`` proposes, in words (the doc's table of contenders)."""
    r0 = min(trrs.init_radius, space_radius)
    words = {
        "trrs": (f"TRRS, the paper's search: rounds of {trrs.round_size or 4} candidates "
                 f"uniform in a box of half-width r around the incumbent (r starts at {r0:g}, "
                 f"x{trrs.grow:g} after a move, x{trrs.shrink:g} after a failed round); the "
                 f"incumbent moves only when a candidate's mean over {1 + trrs.reeval_seeds} "
                 "seeds beats its own, and those re-evaluations count against the budget"),
        "random-local": (f"uniform in a box of half-width {r0:g} around the start point, "
                         "independently of every loss seen: TRRS's initial trust region, i.e. "
                         "TRRS's first round without moving, adapting the radius or "
                         "re-evaluating (the non-degenerate random baseline)"),
        "random-box": (f"uniform in the whole search box (±{space_radius:g} in every "
                       "coordinate): the search stage's `algorithm: random`"),
        "tpe": ("Optuna's TPE (multivariate, 10 start-up trials) over the box, its first trial "
                "the start point"),
        "cmaes": ("Optuna's CMA-ES, mean at the start point, step size a sixth of the box's "
                  "width"),
    }
    return words[name]


def make_contender(name: str, space: SearchSpace, seed: int, explore_seed: int = 0,
                   trrs: Optional[TRRSConfig] = None, journal: Optional[Path] = None) -> Searcher:
    """A fresh searcher for contender ``name`` (Optuna's journal file, if given, starts
    afresh)."""
    from . import make_searcher

    cfg = trrs or TRRSConfig()
    if name == "random-local":
        return make_searcher("random", space, seed, explore_seed,
                             random_radius=cfg.init_radius)
    if name == "random-box":
        return make_searcher("random", space, seed, explore_seed)
    if name in ("trrs", "tpe", "cmaes"):
        return make_searcher(name, space, seed, explore_seed, journal=journal, trrs=cfg)
    raise ValueError(f"unknown contender {name!r}; known: {', '.join(CONTENDERS)}")


# ---------------------------------------------------------------------------------------------
# Traces: the recommended point's loss after each round of trials.

Trace = list[tuple[int, float]]
"""(trials told, loss of the recommended point then), one entry per round, n increasing."""


def traced_drive(searcher: Searcher, evaluate: Evaluate, budget: int, parallel: int,
                 loss_of: Callable[[Searcher], float]) -> Trace:
    """Drive ``searcher`` to ``budget`` trials (`cp.search.driver.drive`), recording after
    every round the trials told and ``loss_of(searcher)`` -- the loss of what it recommends."""
    trace: Trace = []

    def after(_trials: Sequence[Trial]) -> None:
        told = sum(not t.pending for t in searcher.trials)
        trace.append((told, float(loss_of(searcher))))

    drive(searcher, evaluate, budget, parallel, after=after)
    return trace


def gap_closed(start: float, optimum: float, loss: float) -> float:
    """The fraction of the gap from ``start`` to ``optimum`` that ``loss`` has closed (0 at
    the start point, 1 at the optimum, negative when worse than the start)."""
    if not start > optimum:
        raise ValueError(f"no gap: start {start} is not above the optimum {optimum}")
    if not math.isfinite(loss):
        return -math.inf
    return (start - loss) / (start - optimum)


def trials_to_fraction(trace: Sequence[tuple[int, float]], start: float, optimum: float,
                       fraction: float) -> Optional[int]:
    """The first number of trials after which the recommended point has closed at least
    ``fraction`` of the gap, or None when it never does within the trace."""
    for n, loss in sorted(trace):
        if gap_closed(start, optimum, loss) >= fraction - 1e-12:
            return n
    return None


def closed_after(trace: Sequence[tuple[int, float]], start: float, optimum: float,
                 n: int) -> float:
    """The gap closed by the point recommended after ``n`` trials (the last round told by then;
    0 before the first)."""
    known = [loss for m, loss in sorted(trace) if m <= n]
    return gap_closed(start, optimum, known[-1]) if known else 0.0


def trial_counts(searcher: Searcher, start_loss: float) -> dict[str, int]:
    """How the explored (new-point) trials went: how many, how many diverged, and how many
    beat the start point's loss on the same seed."""
    explored = [t for t in searcher.explored() if not t.pending]
    return {"explored": len(explored),
            "diverged": sum(not math.isfinite(t.told_loss) for t in explored),
            "improved": sum(t.told_loss < start_loss for t in explored)}


def explore_loss(searcher: Searcher, x: Sequence[float]) -> float:
    """The loss of point ``x`` on the searcher's exploration seed (every recommended point was
    explored there)."""
    for t in searcher.trials:
        if t.seed == searcher.explore_seed and not t.pending and t.x == list(x):
            return t.told_loss
    raise ValueError("the point was never evaluated on the exploration seed")


def recommended_explore_loss(searcher: Searcher) -> float:
    rec = searcher.recommend()
    return math.inf if rec is None else explore_loss(searcher, rec[0])


# ---------------------------------------------------------------------------------------------
# The synthetic part: cheap, exact gap.


def synthetic_space(dim: int, radius: float) -> SearchSpace:
    return SearchSpace(tuple(Dim("lr", "type", f"g{i}") for i in range(dim)), radius)


def synthetic_run(name: str, dim: int, seed: int, budget: int, parallel: int,
                  radius: float = 2.0, trrs: Optional[TRRSConfig] = None) -> dict[str, Any]:
    """Contender ``name`` on `CliffLandscape(dim, seed)` with search seed ``seed``: its trace
    of noise-free losses of the recommended point, and its trial counts."""
    f = CliffLandscape(dim, seed=seed)
    searcher = make_contender(name, synthetic_space(dim, radius), seed, trrs=trrs)
    start = f.true_loss([0.0] * dim)
    trace = traced_drive(searcher, lambda ts: [f(t.x, t.seed) for t in ts], budget, parallel,
                         lambda s: f.true_loss(rec[0]) if (rec := s.recommend()) else start)
    return {"seed": seed, "start": start, "optimum": f.optimum_loss, "trace": trace,
            **trial_counts(searcher, f(searcher.space.center(), searcher.explore_seed))}


# ---------------------------------------------------------------------------------------------
# Summaries over seeds and comparisons between contenders.


@dataclass(frozen=True)
class Reach:
    """Trials to reach one fraction of the gap, over seeds (None: not within the budget)."""

    trials: tuple[Optional[int], ...]

    @property
    def reached(self) -> int:
        return sum(t is not None for t in self.trials)

    def _as_float(self) -> list[float]:
        return [math.inf if t is None else float(t) for t in self.trials]

    @property
    def median(self) -> float:
        """Median over seeds, a seed that never reaches counting as infinitely many trials
        (so inf when at most half the seeds reach)."""
        return statistics.median(self._as_float())

    @property
    def low(self) -> float:
        return min(self._as_float())

    @property
    def high(self) -> float:
        return max(self._as_float())

    def cell(self) -> str:
        """``k/S: median (low-high)``, "never" for an infinite value."""
        if not self.reached:
            return f"0/{len(self.trials)}: never"
        return (f"{self.reached}/{len(self.trials)}: {_trials(self.median)} "
                f"({_trials(self.low)}–{_trials(self.high)})")


def _trials(v: float) -> str:
    return "never" if math.isinf(v) else f"{v:g}"


@dataclass(frozen=True)
class Verdict:
    """One contender against another: which is lower (fewer trials, lower loss), with the
    counts and the p-value behind it."""

    a: str
    b: str
    a_better: int
    b_better: int
    p: float
    paired: bool

    @property
    def decided(self) -> bool:
        return self.p < ALPHA

    def text(self, unit: str) -> str:
        if self.paired:
            counts = f"{self.a_better} vs {self.b_better} {unit}; sign test p = {self.p:.2g}"
        else:
            counts = f"Mann-Whitney p = {self.p:.2g}"
        if not self.decided:
            return f"cannot tell {self.a} from {self.b} ({counts})"
        winner, loser = (self.a, self.b) if self.a_better > self.b_better else (self.b, self.a)
        return f"{winner} beats {loser} ({counts})"


def paired_verdict(a: str, xs: Sequence[float], b: str, ys: Sequence[float]) -> Verdict:
    """Two contenders on the same seeds (the same landscapes): a two-sided sign test on which
    is lower seed by seed (ties, e.g. both never reaching, left out)."""
    from scipy import stats

    a_better = sum(x < y for x, y in zip(xs, ys, strict=True))
    b_better = sum(y < x for x, y in zip(xs, ys, strict=True))
    n = a_better + b_better
    p = stats.binomtest(a_better, n, 0.5).pvalue if n else 1.0
    return Verdict(a, b, a_better, b_better, float(p), paired=True)


def unpaired_verdict(a: str, xs: Sequence[float], b: str, ys: Sequence[float]) -> Verdict:
    """Two contenders on unrelated seeds: a two-sided Mann-Whitney U test (ties allowed;
    infinite values rank last)."""
    from scipy import stats

    big = 1e300  # inf ranks last without upsetting the test's arithmetic
    xf = [min(v, big) for v in xs]
    yf = [min(v, big) for v in ys]
    if len(set(xf) | set(yf)) == 1:
        p = 1.0
    else:
        p = float(stats.mannwhitneyu(xf, yf, alternative="two-sided").pvalue)
    a_better = sum(x < y for x in xf for y in yf)  # pairs in which a is lower
    b_better = sum(y < x for x in xf for y in yf)
    return Verdict(a, b, a_better, b_better, p, paired=False)


def reaches(runs: Sequence[Mapping[str, Any]], fraction: float,
            start: Optional[float] = None, optimum: Optional[float] = None) -> Reach:
    """Trials to ``fraction`` of the gap for each run (a run's own start and optimum unless
    given)."""
    return Reach(tuple(trials_to_fraction(r["trace"], start if start is not None else r["start"],
                                          optimum if optimum is not None else r["optimum"],
                                          fraction) for r in runs))


def closed_at(runs: Sequence[Mapping[str, Any]], n: int, start: Optional[float] = None,
              optimum: Optional[float] = None) -> list[float]:
    return [closed_after(r["trace"], start if start is not None else r["start"],
                         optimum if optimum is not None else r["optimum"], n) for r in runs]


def median_range(values: Sequence[float], digits: int = 2, percent: bool = True) -> str:
    def f(v: float) -> str:
        if percent:
            return "-∞" if math.isinf(v) else f"{100 * v:.0f}%"
        return fmt(v, digits)

    return f"{f(statistics.median(values))} ({f(min(values))} to {f(max(values))})"


# ---------------------------------------------------------------------------------------------
# The document section.

#: Budgets at which the gap closed so far is tabulated (those below the comparison's budget,
#: plus the budget itself).
BUDGETS = (8, 16, 32, 64, 128, 256, 512)


def comparison_section(doc: Doc, data: Mapping[str, Any], level: int = 1,
                       found: Optional[Findings] = None,
                       figures: Optional[Mapping[str, Path]] = None) -> None:
    """The searchers compared (benchmarks/search_comparison.py's JSON): what each proposes,
    trials to fixed fractions of the gap on the synthetic landscape and on the study's proxy,
    the proxy's recommended points on fresh seeds, and a reading computed from those numbers.
    ``figures`` maps a part ("synthetic", "real") to a figure of its progress."""
    if data.get("format") != FORMAT:
        doc.p("This search comparison was written by an older version of "
              "benchmarks/search_comparison.py and is not shown: run the benchmark again.")
        return
    figures = figures or {}
    load = data.get("load")
    busy = (f"; load average {load[0]:.1f} at the start and {load[1]:.1f} at the end"
            if load else "")
    doc.p(f"Run {data['date']} on {data['machine']}, commit {data['commit']}, by "
          f"`{data['command']}` ({data['wall_min']:.0f} min wall time{busy})"
          + (f"; this page written again from its numbers by `{data['rendered']}`."
             if data.get("rendered") else "."))
    doc.p("Every contender gets the same budget of trials (training runs, re-evaluations "
          "included) and starts at the global optimum (every factor 1). Progress is the "
          "fraction of the gap between that start point and the optimum closed by the point "
          "the contender recommends after n trials (TRRS: its incumbent; the others: their best "
          "trial). Contenders and their proposal distributions:")
    doc.table(["contender", "proposals"],
              [[name, text] for name, text in data["contenders"].items()])
    syn = data.get("synthetic")
    if syn:
        _synthetic(doc, syn, data["fractions"], level, figures.get("synthetic"))
    real = data.get("real")
    if real:
        _real(doc, real, data["fractions"], level, found, figures.get("real"))


def _reach_table(doc: Doc, runs: Mapping[str, Sequence[Mapping[str, Any]]],
                 fractions: Sequence[float], budget: int, start: Optional[float] = None,
                 optimum: Optional[float] = None) -> None:
    budgets = [b for b in BUDGETS if b < budget] + [budget]
    rows = []
    for name, rs in runs.items():
        explored = sum(r["explored"] for r in rs)
        rows.append([name, *(reaches(rs, f, start, optimum).cell() for f in fractions),
                     *(f"{100 * statistics.median(closed_at(rs, b, start, optimum)):.0f}%"
                       for b in budgets),
                     f"{sum(r['improved'] for r in rs)}/{explored}",
                     f"{sum(r['diverged'] for r in rs)}/{explored}"])
    doc.table(["contender", *(f"{f:.0%} of the gap" for f in fractions),
               *(f"n={b}" for b in budgets), "explored trials better than the start",
               "explored trials diverged"], rows)


def _reading(runs: Mapping[str, Sequence[Mapping[str, Any]]], fractions: Sequence[float],
             paired: bool, unit: str, start: Optional[float] = None,
             optimum: Optional[float] = None) -> list[str]:
    """Per fraction: how many seeds each contender reaches it in, and the fastest contender
    against each other one."""
    out = []
    verdict = paired_verdict if paired else unpaired_verdict
    for f in fractions:
        reach = {name: reaches(rs, f, start, optimum) for name, rs in runs.items()}
        order = sorted(reach, key=lambda n: (reach[n].median, -reach[n].reached))
        said = []
        for name in order:
            r = reach[name]
            if r.reached == 0:
                said.append(f"{name} never does")
            elif math.isinf(r.median):
                said.append(f"{name} only in {r.reached} of {len(r.trials)}")
            else:
                said.append(f"{name} in {r.reached} of {len(r.trials)} (median "
                            f"{_trials(r.median)} trials, range {_trials(r.low)}–"
                            f"{_trials(r.high)})")
        first = order[0]
        text = f"**{f:.0%} of the gap**: " + "; ".join(said) + "."
        if reach[first].reached:
            versus = [verdict(first, reach[first]._as_float(), other,
                              reach[other]._as_float()).text(unit)
                      for other in order[1:]]
            text += " Trials to get there: " + "; ".join(versus) + "."
        out.append(text)
    return out


def _final_reading(runs: Mapping[str, Sequence[Mapping[str, Any]]], budget: int, paired: bool,
                   unit: str, start: Optional[float] = None,
                   optimum: Optional[float] = None) -> str:
    """The gap closed once the budget is spent: each contender's median and range, and the
    contender with the largest median against each other one."""
    verdict = paired_verdict if paired else unpaired_verdict
    closed = {name: closed_at(rs, budget, start, optimum) for name, rs in runs.items()}
    order = sorted(closed, key=lambda n: -statistics.median(closed[n]))
    first = order[0]
    text = (f"**After all {budget} trials** the recommended point has closed (median over "
            "seeds, range): " + "; ".join(f"{n} {median_range(closed[n])}" for n in order)
            + ".")
    versus = [verdict(first, [-v for v in closed[first]], other,
                      [-v for v in closed[other]]).text(unit) for other in order[1:]]
    return text + " Gap closed: " + "; ".join(versus) + "."


def _synthetic(doc: Doc, syn: Mapping[str, Any], fractions: Sequence[float], level: int,
               figure: Optional[Path]) -> None:
    runs = syn["runs"]
    seeds = len(next(iter(runs.values())))
    doc.h(level, f"Synthetic landscape, {syn['dim']} dimensions")
    doc.p(f"`cp.search.synthetic.CliffLandscape(dim={syn['dim']}, seed=s)` for s = 0..."
          f"{seeds - 1}: a quadratic bowl (curvatures spanning 15x) whose optimum, loss "
          f"{fmt(syn['optimum'], 3)}, lies just below a wiggly divergence cliff along the first "
          f"coordinate; seed noise {syn['noise']:g}. Search space ±{syn['radius']:g} (log2) in "
          f"every coordinate; budget {syn['budget']} trials, {syn['parallel']} in flight; "
          "search seed s on landscape s, so contenders meet the same landscapes. Losses are "
          "noise-free (the gap is exact). The start point's gap to the optimum: median "
          f"{median_range([r['start'] - r['optimum'] for r in runs[next(iter(runs))]], 3, False)}"
          " nats over the landscapes.")
    doc.p("Trials until the recommended point has closed 50%, 90%, 99% of the gap: seeds that "
          "get there out of all seeds, then the median over all seeds and the range (a seed "
          "that never gets there counts as never; the median is \"never\" when at most half "
          "do); then the gap closed after n trials (median over seeds); then the explored "
          "trials that beat the start point and that diverged, summed over seeds:")
    _reach_table(doc, runs, fractions, syn["budget"])
    if figure:
        doc.fig(figure, "gap closed against trials on the synthetic landscape: median over "
                "landscapes, band from the lowest to the highest")
    doc.p("Reading (computed from the table; paired by landscape, two-sided sign test at "
          f"{ALPHA:g}):")
    for line in _reading(runs, fractions, paired=True, unit="landscapes"):
        doc.p(f"- {line}")
    doc.p(f"- {_final_reading(runs, syn['budget'], paired=True, unit='landscapes')}")
    for line in _degenerate(runs):
        doc.p(f"- {line}")


def _degenerate(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """A sentence per contender whose explored trials never beat the start point."""
    out = []
    for name, rs in runs.items():
        explored = sum(r["explored"] for r in rs)
        if explored and not sum(r["improved"] for r in rs):
            diverged = sum(r["diverged"] for r in rs)
            out.append(f"{name} is degenerate here: none of its {explored} explored trials "
                       f"beat the start point ({diverged} diverged), so its recommended point "
                       "is the start point on every seed.")
    return out


def _real(doc: Doc, real: Mapping[str, Any], fractions: Sequence[float], level: int,
          found: Optional[Findings], figure: Optional[Path]) -> None:
    p, runs = real["proxy"], real["runs"]
    start, optimum = real["start"], real["optimum"]
    seeds = real["search_seeds"]
    doc.h(level, f"Per-module search of the `{real['spec']}` proxy")
    doc.p(f"Proxy: width {p['width']}, depth {p['depth']}, batch {p['batch']} x "
          f"{p['seq_len']}, {p['tokens']:,} tokens; {real['dims']} log2 factors (kinds "
          f"{', '.join(real['kinds'])}) in ±{real['radius']:g}; budget {real['budget']} "
          f"trials, {real['parallel']} in flight; search seeds {seeds}, every trial trained "
          f"with seed {real['explore_seed']} (TRRS re-evaluates on seeds "
          f"{real['trrs_reeval_seeds']}, inside its budget). The start point is "
          f"{real['start_hps']}, every factor 1. {real['why']}")
    if not start > optimum:
        doc.p(f"No contender's recommended point beat the start point's seed-"
              f"{real['explore_seed']} loss ({fmt(start)}) on any search seed: there is no gap "
              "to close in-sample.")
        _fresh(doc, real, found)
        return
    doc.p(f"The optimum is unknown here. The gap runs from the start point's loss on seed "
          f"{real['explore_seed']}, {fmt(start)}, to the lowest seed-{real['explore_seed']} loss "
          f"any contender's recommended point reached on any search seed, {fmt(optimum)} "
          f"({real['optimum_by']}). Both are in-sample: the search chose its points on that "
          "very seed, so lucky seed noise counts as progress.")
    _reach_table(doc, runs, fractions, real["budget"], start, optimum)
    if figure:
        doc.fig(figure, f"gap closed against trials on the {real['spec']} proxy (in-sample): "
                "median over search seeds, band from the lowest to the highest")
    doc.p("Reading, in-sample (search seeds are unrelated between contenders: two-sided "
          f"Mann-Whitney test at {ALPHA:g}):")
    for line in _reading(runs, fractions, paired=False, unit="", start=start,
                         optimum=optimum):
        doc.p(f"- {line}")
    doc.p(f"- {_final_reading(runs, real['budget'], False, '', start, optimum)}")
    for line in _degenerate(runs):
        doc.p(f"- {line}")
    _fresh(doc, real, found)


def _stdev(values: Sequence[float]) -> float:
    """The sample standard deviation; nan with fewer than 2 values or a diverged one."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values)


def _fresh(doc: Doc, real: Mapping[str, Any], found: Optional[Findings]) -> None:
    """Each final recommended point on the fresh seeds, against the start point there."""
    runs, base = real["runs"], real["start_fresh"]
    eval_seeds = real["eval_seeds"]
    base_mean = statistics.fmean(base)
    doc.p(f"Out of sample: each contender's final recommended point and the start point "
          f"trained on seeds {eval_seeds}, which no contender searched with. Gain = the start "
          "point's mean loss minus the recommended point's, over those seeds (positive: "
          f"better than the global optimum; the start point's mean is {fmt(base_mean)}, seed "
          f"spread {fmt(_stdev(base), 2)}).")

    def gain(r: Mapping[str, Any]) -> float:
        return base_mean - statistics.fmean(r["fresh"])

    def noise(r: Mapping[str, Any]) -> float:
        diffs = [b - v for b, v in zip(base, r["fresh"], strict=True)]
        return _stdev(diffs) / math.sqrt(len(diffs))

    rows, gains = [], {}
    for name, rs in runs.items():
        gains[name] = [gain(r) for r in rs]
        finite = [g for g in gains[name] if math.isfinite(g)]
        rows.append([name, median_range(gains[name], 4, percent=False),
                     f"{sum(g > 0 for g in finite)}/{len(rs)}",
                     fmt(statistics.median([noise(r) for r in rs]), 2),
                     " ".join(fmt(g, 3) for g in gains[name])])
    doc.table(["contender", "gain on fresh seeds: median (range) over search seeds",
               "search seeds with a gain > 0", "standard error of one gain (median)",
               "gain per search seed"], rows)
    order = sorted(gains, key=lambda n: -statistics.median(gains[n]))
    best = order[0]
    versus = [unpaired_verdict(best, [-g for g in gains[best]], other,
                               [-g for g in gains[other]]).text("")
              for other in order[1:]]
    text = (f"**On fresh seeds** the median gain over the start point is largest for {best}: "
            f"{fmt(statistics.median(gains[best]), 3)} nats (range "
            f"{fmt(min(gains[best]), 3)} to {fmt(max(gains[best]), 3)} over "
            f"{len(gains[best])} search seeds). Against the others: " + "; ".join(versus) + ".")
    doc.p("Reading, out of sample:")
    doc.p(f"- {text}")
    for name in order:
        n_pos = sum(g > 0 for g in gains[name])
        doc.p(f"- {name}: its recommended point beats the start point on fresh seeds for "
              f"{n_pos} of {len(gains[name])} search seeds.")
    if found is not None:
        found.claim("search_comparison", text, best=best,
                    median_gain={n: statistics.median(g) for n, g in gains.items()})
        for name, g in gains.items():
            found.metric(f"search_comparison.{name}.fresh_gain", statistics.median(g))
