"""Optuna's TPE and CMA-ES behind the same ask/tell interface, through Optuna's own ask/tell
API (no sampler is written here). Optuna's journal file in the search folder is their
persisted state, so a resumed search continues the same Optuna study.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from .base import Proposal, Searcher, Trial
from .space import SearchSpace

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.samplers import BaseSampler

#: What a diverged or failed trial is told (Optuna wants finite values; both samplers only
#: rank them, so any value above every real loss works).
FAILURE_VALUE = 1e6


class OptunaSearcher(Searcher):
    name = "optuna"

    def __init__(self, space: SearchSpace, seed: int = 0, explore_seed: int = 0,
                 storage_path: Optional[Path] = None, resume: bool = False):
        """``storage_path``: Optuna's journal file. A new search (``resume`` false) starts a
        new journal; a resumed one (whose state will be loaded) continues the existing one."""
        import optuna

        super().__init__(space, seed, explore_seed)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = None
        if storage_path is not None:
            if not resume:
                Path(storage_path).unlink(missing_ok=True)
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            Path(storage_path).parent.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(str(storage_path)))
        self.study = optuna.create_study(study_name=f"cp-{self.name}", storage=storage,
                                         sampler=self.make_sampler(seed), direction="minimize",
                                         load_if_exists=True)
        self.names = [d.name for d in space.dims]
        self.distributions: dict[str, BaseDistribution] = {
            n: optuna.distributions.FloatDistribution(-space.radius, space.radius)
            for n in self.names}
        if not self.study.trials:  # like every searcher here, start at the global optimum
            self.study.enqueue_trial(dict.fromkeys(self.names, 0.0))
        self.numbers: dict[int, int] = {}  # our trial id -> Optuna trial number
        self._asked_number: Optional[int] = None

    def make_sampler(self, seed: int) -> BaseSampler:
        raise NotImplementedError

    def propose(self) -> Optional[Proposal]:
        trial = self.study.ask(self.distributions)
        self._asked_number = trial.number
        return Proposal([trial.params[n] for n in self.names], self.explore_seed)

    def asked(self, trial: Trial) -> None:
        assert self._asked_number is not None  # set by propose() just before
        self.numbers[trial.id] = self._asked_number

    def observe(self, trial: Trial) -> None:
        value = trial.loss if trial.loss is not None and math.isfinite(trial.loss) \
            else FAILURE_VALUE
        self.study.tell(self.numbers[trial.id], value, skip_if_finished=True)

    def extra_state(self) -> dict:
        return {"numbers": {str(k): v for k, v in self.numbers.items()}}

    def load_extra_state(self, state: dict) -> None:
        self.numbers = {int(k): v for k, v in state["numbers"].items()}


class TPE(OptunaSearcher):
    """Tree-structured Parzen estimator (Optuna's TPESampler, multivariate)."""

    name = "tpe"

    def make_sampler(self, seed: int) -> BaseSampler:
        import optuna

        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)


class CMAES(OptunaSearcher):
    """CMA-ES (Optuna's CmaEsSampler). Its mean starts at the box's centre -- the global
    optimum -- with sigma a sixth of the box's width."""

    name = "cmaes"

    def make_sampler(self, seed: int) -> BaseSampler:
        import optuna

        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
