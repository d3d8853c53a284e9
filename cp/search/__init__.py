"""Per-module HP search: a factorised search space and ask/tell searchers with persisted state."""

from .base import Searcher, Trial
from .random import RandomSearch
from .space import Dim, SearchSpace

#: Searchers by the name a spec uses.
ALGORITHMS: dict[str, type[Searcher]] = {"random": RandomSearch}


def make_searcher(algorithm: str, space: SearchSpace, seed: int = 0) -> Searcher:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown search algorithm {algorithm!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[algorithm](space, seed)


__all__ = ["ALGORITHMS", "Dim", "RandomSearch", "SearchSpace", "Searcher", "Trial",
           "make_searcher"]
