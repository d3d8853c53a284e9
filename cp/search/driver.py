"""The loop that drives any searcher: ask up to ``parallel`` trials, evaluate them together,
tell the results; repeat until the budget is spent. The search stage, the benchmark and the
tests all run searches through it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional

from .base import Searcher, Trial

Evaluate = Callable[[Sequence[Trial]], Sequence[float]]


def drive(searcher: Searcher, evaluate: Evaluate, budget: int, parallel: int,
          before: Optional[Callable[[Sequence[Trial]], None]] = None,
          after: Optional[Callable[[Sequence[Trial]], None]] = None) -> None:
    """Run ``searcher`` until it holds ``budget`` trials, all told.

    Trials asked but not told (a search killed mid-round and restored from its state) are
    evaluated first. ``before`` sees each round's trials once they are asked (to save the
    state before the expensive part), ``after`` once they are told.
    """
    while True:
        asked = [t for t in searcher.trials if t.pending]
        while len(asked) < parallel and len(searcher.trials) < budget:
            t = searcher.ask()
            if t is None:  # the searcher waits for results before proposing more
                break
            asked.append(t)
        if not asked:
            return
        if before:
            before(asked)
        for t, loss in zip(asked, evaluate(asked), strict=True):
            searcher.tell(t.id, loss)
        if after:
            after(asked)
