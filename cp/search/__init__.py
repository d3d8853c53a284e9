"""Per-module HP search: a factorised search space and ask/tell searchers with persisted state.

Searchers: ``trrs`` (trust-region random search, the paper's), ``random``, and Optuna's ``tpe``
and ``cmaes``, all starting from the global optimum and all driven the same way.
"""

from pathlib import Path
from typing import Optional

from .base import Proposal, Searcher, Trial
from .random import RandomSearch
from .space import Dim, SearchSpace
from .trrs import TRRS, TRRSConfig

ALGORITHMS = ("trrs", "random", "tpe", "cmaes")


def make_searcher(algorithm: str, space: SearchSpace, seed: int = 0, explore_seed: int = 0,
                  journal: Optional[Path] = None, trrs: Optional[TRRSConfig] = None,
                  resume: bool = False, random_radius: Optional[float] = None) -> Searcher:
    """A searcher by name. ``journal`` is the file Optuna's samplers persist their study in
    besides the searcher's state; ``resume`` says that state will be loaded next (else the
    journal starts afresh). ``random_radius``: the half-width of random search's box around
    the start point (None: the whole space)."""
    if algorithm == "random":
        return RandomSearch(space, seed, explore_seed, radius=random_radius)
    if algorithm == "trrs":
        return TRRS(space, seed, explore_seed, trrs)
    if algorithm in ("tpe", "cmaes"):
        from .optuna_samplers import CMAES, TPE

        cls = TPE if algorithm == "tpe" else CMAES
        return cls(space, seed, explore_seed, journal, resume=resume)
    raise ValueError(f"unknown search algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")


__all__ = ["ALGORITHMS", "TRRS", "Dim", "Proposal", "RandomSearch", "SearchSpace", "Searcher",
           "TRRSConfig", "Trial", "make_searcher"]
