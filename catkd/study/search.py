"""Searchers: Optuna (TPE or random sampler) over the define-by-run space, kept honest under ASHA."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import optuna
from ray.tune.search.optuna import OptunaSearch

from catkd.study.space import DefineByRun
from catkd.study.spec import Arm, StudySpec


class HonestOptunaSearch(OptunaSearch):
    """A trial the scheduler stopped early is told to Optuna as PRUNED, with its stopping value.

    Ray's OptunaSearch tells every completed trial as COMPLETE with its last (low-budget) value,
    which makes TPE model early-stopped trials as if they had finished. And Ray 2.60 does not pass
    the result that got a trial stopped to `on_trial_result` (with a grace period of 1 a pruned trial
    would have no intermediate value at all). So: intermediate values are reported at the trial's
    epoch, the stopping result is reported as the intermediate value of its epoch, then the trial
    is told PRUNED; TPE ranks pruned trials by that last value, as with Optuna's own pruners.
    A diverged trial reports a NaN metric and ends as FAIL.
    """

    def restore(self, checkpoint_path: str) -> None:
        """After a kill, the study's database may hold trials the searcher's last checkpoint does not
        know (started after it): they will never report, so they are told FAIL, not left RUNNING."""
        super().restore(checkpoint_path)
        study = getattr(self, "_ot_study", None)
        if study is None:
            return
        known = {t._trial_id for t in self._ot_trials.values()}
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t._trial_id not in known:
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_result(trial_id, result)
        self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The metric as the intermediate value at the result's epoch (once per epoch)."""
        value, step = result.get(self.metric), result.get("epoch")
        if value is None or step is None or not math.isfinite(float(value)):
            return
        ot_trial = self._ot_trials[trial_id]
        done = ot_trial.study._storage.get_trial(ot_trial._trial_id).intermediate_values
        if int(step) not in done:
            ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if result and not error and result.get("status") != "diverged" and trial_id in self._ot_trials:
            budget = result.get("epochs_budget")
            if budget is not None and result.get("epoch", budget) < budget:
                self._report(trial_id, result)  # the value that got it stopped
                return super().on_trial_complete(trial_id, None, error=False)  # -> PRUNED
            self._report(trial_id, result)  # a finished trial's last epoch is an intermediate value too
        return super().on_trial_complete(trial_id, result, error)


def make_searcher(spec: StudySpec, metric: str, mode: str, db: Optional[Path] = None,
                  arm: Optional[Arm] = None, start_over: bool = False) -> Optional[OptunaSearch]:
    """Searcher for the study's search.algorithm (None for grid: Tune's grid_search does it), over
    one arm's space (the study's only arm by default).

    The Optuna study lives in `db` (SQLite, `<experiment>/optuna.db`), written as the study runs:
    `optuna-dashboard sqlite:///<experiment>/optuna.db` shows it live, one Optuna study per arm.
    `start_over`: a stage begun again drops the Optuna study of its earlier attempt from `db`."""
    algo = spec.search.algorithm
    if algo == "grid":
        return None
    if algo == "optuna":
        startup = min(10, max(2, spec.search.num_samples // 4))
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=startup)
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    storage = None
    if db is not None:
        storage = optuna.storages.RDBStorage(f"sqlite:///{Path(db).resolve()}")
    name = f"{spec.name}:{arm.label}" if arm is not None and arm.label else spec.name
    if start_over and storage is not None:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:  # it had not been created
            pass
    return HonestOptunaSearch(space=DefineByRun(spec, arm), metric=metric, mode=mode, sampler=sampler,
                              storage=storage, study_name=name if storage is not None else None)
