"""Searchers: Optuna (TPE or random sampler) over the define-by-run space, kept honest under ASHA."""
from __future__ import annotations

from typing import Optional

import optuna
from ray.tune.search.optuna import OptunaSearch

from catkd.study.space import DefineByRun
from catkd.study.spec import StudySpec


class HonestOptunaSearch(OptunaSearch):
    """A trial the scheduler stopped early is told to Optuna as PRUNED, not COMPLETE.

    Ray's OptunaSearch tells every completed trial as COMPLETE with its last (low-budget) value,
    which makes TPE model early-stopped trials as if they had finished. Their intermediate values
    were already reported epoch by epoch; telling them PRUNED keeps them out of TPE's "complete"
    set while TPE still ranks them by their last intermediate value, as with Optuna's own pruners.
    A diverged trial reports a NaN metric and ends as FAIL.
    """

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if result and not error and result.get("status") != "diverged":
            budget = result.get("epochs_budget")
            if budget is not None and result.get("epoch", budget) < budget:
                return super().on_trial_complete(trial_id, None, error=False)  # -> PRUNED
        return super().on_trial_complete(trial_id, result, error)


def make_searcher(spec: StudySpec, metric: str, mode: str) -> Optional[OptunaSearch]:
    """Searcher for the study's search.algorithm (None for grid: Tune's grid_search does it)."""
    algo = spec.search.algorithm
    if algo == "grid":
        return None
    if algo == "optuna":
        startup = min(10, max(2, spec.search.num_samples // 4))
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    return HonestOptunaSearch(space=DefineByRun(spec), metric=metric, mode=mode, sampler=sampler)
