"""The ask/tell interface every searcher implements, and the trial record.

A searcher proposes points of a `SearchSpace` (``ask``) and learns their losses (``tell``).
Several trials may be in flight at once; a searcher that needs results before it can propose
more (TRRS between rounds) returns None from ``ask``. Diverged runs are told with ``loss =
inf``: the landscape has cliffs, and a proposal past one is a failure, not an error.
Everything a searcher knows is in ``state_dict()`` (JSON-serialisable, plus files it names),
so a killed search resumes with exactly the trials it had.
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
    """The point, in log2 factors."""
    seed: int
    """Seed of the training run (re-evaluations use fresh seeds)."""
    purpose: str = "explore"
    """``explore`` (a new point) or ``reeval`` (a known point on another seed)."""
    loss: Optional[float] = None
    """Final validation loss once told; inf for a diverged or failed run."""
    run_id: Optional[str] = None

    @property
    def pending(self) -> bool:
        return self.loss is None

    @property
    def told_loss(self) -> float:
        """The loss of a told trial (a pending one is an error)."""
        if self.loss is None:
            raise ValueError(f"trial {self.id} is still pending")
        return self.loss

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Proposal:
    x: list[float]
    seed: int
    purpose: str = "explore"


class Searcher:
    """Base class: keeps the trials and the bookkeeping; subclasses decide where to look.

    ``explore_seed`` is the training seed of exploration trials: every candidate is trained
    with the same seed (common random numbers make losses comparable), re-evaluations use
    other seeds.
    """

    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0, explore_seed: int = 0):
        self.space = space
        self.seed = seed
        self.explore_seed = explore_seed
        self.trials: list[Trial] = []

    # -- the interface ---------------------------------------------------------------------
    def ask(self) -> Optional[Trial]:
        """A new trial to evaluate, or None while the searcher waits for results."""
        p = self.propose()
        if p is None:
            return None
        if not self.space.contains(p.x):
            raise AssertionError(f"{self.name} proposed a point outside the bounds")
        t = Trial(id=len(self.trials), x=[float(v) for v in p.x], seed=p.seed,
                  purpose=p.purpose)
        self.trials.append(t)
        self.asked(t)
        return t

    def tell(self, trial_id: int, loss: float) -> None:
        """Record the loss of a trial (inf or nan for a diverged/failed run)."""
        t = self.trials[trial_id]
        t.loss = float(loss) if math.isfinite(loss) else math.inf
        self.observe(t)

    def recommend(self) -> Optional[tuple[list[float], float]]:
        """The point the searcher would bet on, and its estimated loss (default: the explored
        trial with the lowest loss)."""
        b = self.best()
        return (b.x, b.told_loss) if b else None

    # -- for subclasses --------------------------------------------------------------------
    def propose(self) -> Optional[Proposal]:
        raise NotImplementedError

    def asked(self, trial: Trial) -> None:
        """React to a trial handed out (default: nothing)."""

    def observe(self, trial: Trial) -> None:
        """React to a told trial (default: nothing)."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # -- queries and persistence -----------------------------------------------------------
    def explored(self) -> list[Trial]:
        return [t for t in self.trials if t.purpose == "explore"]

    def best(self) -> Optional[Trial]:
        """The explored trial with the lowest told loss."""
        done = [t for t in self.explored() if not t.pending and math.isfinite(t.told_loss)]
        return min(done, key=lambda t: t.told_loss) if done else None

    def state_dict(self) -> dict:
        return {"algorithm": self.name, "seed": self.seed, "space": self.space.to_dict(),
                "trials": [t.to_dict() for t in self.trials], "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["algorithm"] != self.name or state["space"] != self.space.to_dict():
            raise ValueError("the saved search state is for another algorithm or space; "
                             "delete the search folder to start over")
        self.trials = [Trial(**t) for t in state["trials"]]
        self.load_extra_state(state["extra"])
