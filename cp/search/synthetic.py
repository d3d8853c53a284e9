"""A synthetic per-module landscape with a known optimum, seed noise and a divergence cliff:
for testing and comparing searchers in seconds instead of hours.

    loss(x, seed) = floor + sum_i a_i (x_i - x*_i)^2 + noise(seed, x)      (inf past the cliff)

The optimum x* sits close to a wiggly cliff along the first coordinate (like a learning rate
whose best value lies just below the edge of stability); curvatures a_i span an order of
magnitude, as module sensitivities do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

#: Mixed into the landscape's seed so that its random stream is not the one a searcher seeded
#: with the same integer draws: with ``default_rng(seed)`` on both sides, random search's first
#: proposal on landscape s with search seed s was the optimum scaled by radius / 0.6.
STREAM = 0x5EA4C4


class CliffLandscape:
    def __init__(self, dim: int, seed: int = 0, noise: float = 0.002, floor: float = 1.0):
        rng = np.random.default_rng([STREAM, seed])
        self.dim, self.noise, self.floor = dim, noise, floor
        self.optimum = rng.uniform(-0.6, 0.6, dim)
        self.optimum[0] = 0.8                 # just below the cliff ...
        if dim > 1:
            self.optimum[1] = 0.0
        self.curvature = np.exp(rng.uniform(math.log(0.02), math.log(0.3), dim))

    def diverges(self, x: np.ndarray) -> bool:
        # ... whose edge wiggles: a small step in the right direction can fall off.
        tilt = 0.3 * x[1] if self.dim > 1 else 0.0
        return x[0] + tilt + 0.05 * math.sin(40 * x[0]) > 1.0

    def true_loss(self, x: Sequence[float]) -> float:
        a = np.asarray(x, dtype=float)
        if self.diverges(a):
            return math.inf
        return float(self.floor + np.sum(self.curvature * (a - self.optimum) ** 2))

    def __call__(self, x: Sequence[float], seed: int) -> float:
        loss = self.true_loss(x)
        if not math.isfinite(loss):
            return loss
        key = hashlib.sha256(np.asarray(x, dtype=float).tobytes() + seed.to_bytes(8, "little"))
        rng = np.random.default_rng(int.from_bytes(key.digest()[:8], "little"))
        return loss + self.noise * float(rng.standard_normal())

    @property
    def optimum_loss(self) -> float:
        return self.floor
