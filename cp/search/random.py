"""Random search: uniform points in the box around the global optimum (the first trial is the
global optimum itself, so the search's best is never worse than where it started)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .base import Proposal, Searcher
from .space import SearchSpace


class RandomSearch(Searcher):
    name = "random"

    def __init__(self, space: SearchSpace, seed: int = 0, explore_seed: int = 0):
        super().__init__(space, seed, explore_seed)
        self.rng = np.random.default_rng(seed)

    def propose(self) -> Optional[Proposal]:
        if not self.trials:
            return Proposal(self.space.center(), self.explore_seed)
        r = self.space.radius
        return Proposal(self.rng.uniform(-r, r, size=self.space.dim).tolist(), self.explore_seed)

    def extra_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_extra_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
