"""Random search around the global optimum: the first trial is the global optimum itself (so
the search's best is never worse than where it started), every later one a point drawn
uniformly from a box around it, independently of every loss seen.

The box's half-width ``radius`` (log2) defaults to the whole search space. In many dimensions
that box is mostly far from the start: with 16 log2 factors in +-2, a uniform point is on
average about 1.2 octaves from the start in every coordinate at once, so almost no draw beats
the start point (and on a landscape with a divergence cliff a large share diverge). A radius
like TRRS's initial trust radius keeps the draws where improvements are likely; it is the
non-degenerate random baseline of benchmarks/search_comparison.py.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .base import Proposal, Searcher
from .space import SearchSpace


class RandomSearch(Searcher):
    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, explore_seed: int = 0,
                 radius: Optional[float] = None):
        """``radius``: half-width of the box the points are drawn from, around the start
        point (None: the whole space, ``space.radius``); clipped to the space."""
        super().__init__(space, seed, explore_seed)
        if radius is not None and not radius > 0:
            raise ValueError(f"random search radius must be > 0, got {radius!r}")
        self.radius = space.radius if radius is None else min(float(radius), space.radius)
        self.rng = np.random.default_rng(seed)

    def propose(self) -> Optional[Proposal]:
        if not self.trials:
            return Proposal(self.space.center(), self.explore_seed)
        r = self.radius
        return Proposal(self.rng.uniform(-r, r, size=self.space.dim).tolist(), self.explore_seed)

    def extra_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "radius": self.radius}

    def load_extra_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.radius = state.get("radius", self.space.radius)  # saved before the radius existed
