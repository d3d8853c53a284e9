"""The ask/tell interface every searcher implements, and the trial record.

A searcher proposes points of a `SearchSpace` (``ask``) and learns their losses (``tell``).
Several trials may be asked before any is told (a batch in flight). Diverged runs are told
with ``loss = inf``: the landscape has cliffs, and a proposal past one is a failure, not an
error. Everything a searcher knows is in ``state_dict()`` (JSON-serialisable), so a killed
search resumes exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

from .space import SearchSpace


@dataclass
class Trial:
    id: int
    x: list[float]
    """The point, in log2 multipliers."""
    seed: int
    """Seed of the training run (re-evaluations use fresh seeds)."""
    purpose: str = "explore"
    """``explore`` (counts against the budget) or ``reeval`` (a re-evaluation)."""
    loss: Optional[float] = None
    """Final validation loss once told; inf for a diverged or failed run."""
    run_id: Optional[str] = None

    @property
    def pending(self) -> bool:
        return self.loss is None

    def to_dict(self) -> dict:
        return asdict(self)


class Searcher:
    """Base class: keeps the trials, hands out ids; subclasses decide where to look."""

    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space = space
        self.seed = seed
        self.trials: list[Trial] = []

    # -- the interface ---------------------------------------------------------------------
    def ask(self) -> Trial:
        """A new trial to evaluate."""
        x = self.propose()
        assert self.space.contains(x), "searcher proposed a point outside the bounds"
        t = Trial(id=len(self.trials), x=list(x), seed=self.trial_seed())
        self.trials.append(t)
        return t

    def tell(self, trial_id: int, loss: float) -> None:
        """Record the loss of a trial (inf or nan for a diverged/failed run)."""
        t = self.trials[trial_id]
        t.loss = loss if math.isfinite(loss) else math.inf
        self.observe(t)

    # -- for subclasses --------------------------------------------------------------------
    def propose(self) -> list[float]:
        raise NotImplementedError

    def observe(self, trial: Trial) -> None:
        """React to a told trial (default: nothing)."""

    def trial_seed(self) -> int:
        return self.seed

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -- queries and persistence -----------------------------------------------------------
    def explored(self) -> list[Trial]:
        return [t for t in self.trials if t.purpose == "explore"]

    def best(self) -> Optional[Trial]:
        """The explored trial with the lowest told loss."""
        done = [t for t in self.explored() if not t.pending and math.isfinite(t.loss)]
        return min(done, key=lambda t: t.loss) if done else None

    def state_dict(self) -> dict:
        return {"algorithm": self.name, "seed": self.seed, "space": self.space.to_dict(),
                "trials": [t.to_dict() for t in self.trials], "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.name or state["space"] != self.space.to_dict():
            raise ValueError("the saved search state is for another algorithm or space; "
                             "delete the search folder to start over")
        self.trials = [Trial(**t) for t in state["trials"]]
        self.load_extra_state(state["extra"])
