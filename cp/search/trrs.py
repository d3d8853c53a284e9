"""Trust-region random search (TRRS), the paper's per-module search.

Start at the global optimum (all factors 1), evaluated on the exploration seed and on
``reeval_seeds`` further seeds. Each round samples ``round_size`` candidates uniformly inside a
box of half-width ``radius`` around the incumbent (in log2 factors), perturbing a random
subset of coordinates when the space is large, and trains them with the exploration seed. The
landscape is noisy and has cliffs, so a candidate never replaces the incumbent on one lucky run:
the best ``reeval_top`` candidates whose loss is below the incumbent's mean are re-evaluated on
the same further seeds, and the incumbent moves only if a candidate's mean over all those seeds
is lower than the incumbent's mean over the same seeds.
A move grows the radius, a failed round shrinks it (between ``min_radius`` and the space's
bounds). Diverged candidates are failures like any other.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

from ..schema import Problems
from .base import Proposal, Searcher, Trial
from .space import SearchSpace


@dataclass
class TRRSConfig:
    """Settings of trust-region random search (log2 units)."""

    init_radius: float = 0.5
    """Initial half-width of the trust region around the incumbent."""
    min_radius: float = 0.05
    """The radius never shrinks below this."""
    grow: float = 1.5
    """Radius factor after a round that moved the incumbent."""
    shrink: float = 0.5
    """Radius factor after a round that did not."""
    round_size: int = 4
    """Candidates per round (0: ``search.parallel``, the trials in flight)."""
    perturb_prob: float = 0.0
    """Probability that a coordinate is perturbed in a candidate (0: min(1, 20/dims), as
    TuRBO does in high dimension); at least one coordinate always is."""
    reeval_top: int = 1
    """Best candidates of a round re-evaluated before the incumbent may move."""
    reeval_seeds: int = 2
    """Fresh seeds of each re-evaluation."""

    def check(self, at: str, problems: Problems) -> None:
        for k in ("init_radius", "min_radius", "grow"):
            problems.positive(f"{at}.{k}", getattr(self, k))
        problems.range(f"{at}.shrink", self.shrink, 0 < self.shrink < 1, "0 < shrink < 1")
        problems.range(f"{at}.perturb_prob", self.perturb_prob, 0 <= self.perturb_prob <= 1,
                       "0 <= perturb_prob <= 1 (0: automatic)")
        problems.at_least(f"{at}.round_size", self.round_size, 0, ">= 0 (0: search.parallel)")
        for k in ("reeval_top", "reeval_seeds"):
            problems.at_least(f"{at}.{k}", getattr(self, k), 1, "an integer >= 1")


def reeval_seeds(explore_seed: int, count: int) -> list[int]:
    """The seeds TRRS re-evaluates candidates on: far from the exploration seed and from the
    stage's own judging seeds. They choose (which candidate moves the incumbent)."""
    return [explore_seed + 1000 + k for k in range(count)]


class TRRS(Searcher):
    name = "trrs"

    def __init__(self, space: SearchSpace, seed: int = 0, explore_seed: int = 0,
                 config: Optional[TRRSConfig] = None):
        super().__init__(space, seed, explore_seed)
        self.cfg = config or TRRSConfig()
        self.rng = np.random.default_rng(seed)
        self.radius = min(self.cfg.init_radius, space.radius)
        self.incumbent: Optional[list[float]] = None
        self.phase = "start"              # start -> explore <-> reeval
        self.queue: list[dict] = []       # proposals not yet handed out
        self.current: list[int] = []      # trial ids handed out in this phase
        self.challengers: list[list[float]] = []
        self.moves = 0
        self.history: list[dict] = []     # one record per decided round

    @property
    def reeval_seed_list(self) -> list[int]:
        return reeval_seeds(self.explore_seed, self.cfg.reeval_seeds)

    # -- the round structure ---------------------------------------------------------------
    def propose(self) -> Optional[Proposal]:
        if self.incumbent is None and not self.queue:
            self._advance()
        if not self.queue:
            return None  # the phase's trials are out: wait for their results
        p = self.queue.pop(0)
        return Proposal(p["x"], p["seed"], p["purpose"])

    def asked(self, trial: Trial) -> None:
        self.current.append(trial.id)

    def observe(self, trial: Trial) -> None:
        # A phase is decided the moment its last trial is told, so the verdict of the last
        # round counts even when the budget ends there.
        if not self.queue and not any(self.trials[i].pending for i in self.current):
            self._advance()

    def _advance(self) -> None:
        """Decide on the finished phase and queue the next one's proposals."""
        if self.incumbent is None:  # first of all, the global optimum itself, on every seed
            self.incumbent = self.space.center()
            self._queue([(self.incumbent, self.explore_seed, "explore")] +
                        [(self.incumbent, s, "reeval") for s in self.reeval_seed_list])
        elif self.phase == "explore":
            self._after_explore()
        elif self.phase == "reeval":
            self._after_reeval()
        else:  # "start": the incumbent has its first loss
            self._new_round()

    def _queue(self, items: list[tuple[list[float], int, str]]) -> None:
        self.current = []
        self.queue = [{"x": list(x), "seed": s, "purpose": p} for x, s, p in items]

    def _new_round(self) -> None:
        self.phase = "explore"
        n = self.cfg.round_size or 4
        self._queue([(self._candidate(), self.explore_seed, "explore") for _ in range(n)])

    def _candidate(self) -> list[float]:
        d = self.space.dim
        p = self.cfg.perturb_prob or min(1.0, 20.0 / d)
        mask = self.rng.random(d) < p
        if not mask.any():
            mask[self.rng.integers(d)] = True
        step = self.rng.uniform(-self.radius, self.radius, size=d) * mask
        return self.space.clip(np.asarray(self.incumbent) + step)

    def _after_explore(self) -> None:
        # Judge the incumbent by its mean over seeds: training small models is chaotic, so any
        # change of HPs redraws the seed noise, and one lucky run must not block every move.
        assert self.incumbent is not None
        inc = self._mean(self.incumbent, [self.explore_seed, *self.reeval_seed_list])
        done = sorted((self.trials[i] for i in self.current), key=lambda t: t.told_loss)
        better = [t.x for t in done if math.isfinite(t.told_loss) and t.told_loss < inc]
        better = better[: self.cfg.reeval_top]
        if not better:
            self._decide(moved=False, note="no candidate beat the incumbent")
            return
        self.challengers = better
        items = [(x, s, "reeval") for x in [*better, self.incumbent]
                 for s in self.reeval_seed_list if s not in self._evals(x)]
        if not items:  # everything needed is known already
            self._after_reeval()
            return
        self.phase = "reeval"
        self._queue(items)

    def _after_reeval(self) -> None:
        seeds = [self.explore_seed, *self.reeval_seed_list]
        assert self.incumbent is not None
        inc = self._mean(self.incumbent, seeds)
        best = min(self.challengers, key=lambda x: self._mean(x, seeds))
        if self._mean(best, seeds) < inc:
            self.incumbent = list(best)
            self._decide(moved=True, note=f"moved: {self._mean(best, seeds):.4f} < {inc:.4f}")
        else:
            self._decide(moved=False, note=f"re-evaluation: {self._mean(best, seeds):.4f} "
                                           f">= {inc:.4f}")

    def _decide(self, moved: bool, note: str) -> None:
        if moved:
            self.moves += 1
            self.radius = min(self.radius * self.cfg.grow, self.space.radius)
        else:
            self.radius = max(self.radius * self.cfg.shrink, self.cfg.min_radius)
        self.history.append({"trials": len(self.trials), "moved": moved,
                             "radius": self.radius, "note": note})
        self.challengers = []
        self._new_round()

    # -- estimates -------------------------------------------------------------------------
    def _evals(self, x: Optional[list[float]]) -> dict[int, float]:
        """Told losses of point ``x`` by seed."""
        if x is None:
            return {}
        return {t.seed: t.told_loss for t in self.trials if not t.pending and t.x == list(x)}

    def _mean(self, x: list[float], seeds: list[int]) -> float:
        ev = self._evals(x)
        losses = [ev.get(s, math.inf) for s in seeds]
        return math.inf if any(math.isinf(v) for v in losses) else statistics.fmean(losses)

    def recommend(self) -> Optional[tuple[list[float], float]]:
        """The incumbent and its mean loss over the seeds it was evaluated on."""
        if self.incumbent is None:
            return None
        ev = self._evals(self.incumbent)
        finite = [v for v in ev.values() if math.isfinite(v)]
        return (list(self.incumbent), statistics.fmean(finite) if finite else math.inf)

    # -- persistence -----------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "radius": self.radius,
                "incumbent": self.incumbent, "phase": self.phase, "queue": self.queue,
                "current": self.current, "challengers": self.challengers,
                "moves": self.moves, "history": self.history, "config": asdict(self.cfg)}

    def load_extra_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        for key in ("radius", "incumbent", "phase", "queue", "current", "challengers",
                    "moves", "history"):
            setattr(self, key, state[key])
        self.cfg = TRRSConfig(**state["config"])
