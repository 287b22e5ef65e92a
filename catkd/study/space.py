"""Study space -> Ray Tune search: Optuna define-by-run (TPE or random sampler) or an explicit grid.

Conditional dimensions (`when:`) are natural in a define-by-run space: a dimension is only
suggested when the dimensions it depends on took the given values, so TPE never sees cam_count
for a trial without partial CAMs. Grids are expanded here into a list of parameter dicts (each
sub-grid, conditions honoured, crossed with the seeds) and handed to `tune.grid_search`.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from catkd.study.spec import Dim, StudySpec, _active, expand_grid


def _ordered(space: dict[str, Dim]) -> list[str]:
    """Dimensions after the ones their `when` depends on."""
    done: list[str] = []
    pending = list(space)
    while pending:
        progressed = False
        for name in list(pending):
            if all(dep in done for dep in (space[name].when or {})):
                done.append(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise ValueError(f"space: circular `when` between {', '.join(pending)}")
    return done


def suggest(trial, name: str, dim: Dim) -> Any:
    if dim.choice is not None:
        return trial.suggest_categorical(name, dim.choice)
    if dim.uniform is not None:
        return trial.suggest_float(name, *dim.uniform)
    if dim.loguniform is not None:
        return trial.suggest_float(name, *dim.loguniform, log=True)
    if dim.randint is not None:
        return trial.suggest_int(name, *dim.randint)
    raise ValueError(f"{name}: {dim.kind} cannot be suggested by Optuna")


def define_by_run(spec: StudySpec) -> Callable[[Any], Optional[dict]]:
    space = spec.subgrids[0]
    order = _ordered(space)
    seed = spec.seeds[0]

    def sample(trial) -> dict:
        params: dict[str, Any] = {}
        for name in order:
            if _active(space[name], params):
                params[name] = suggest(trial, name, space[name])
        return {"seed": seed}  # constants: OptunaSearch adds them to the trial's config

    return sample


class _HonestOptuna:
    """Mixin for OptunaSearch: a trial the scheduler stopped early is told to Optuna as PRUNED.

    Ray's OptunaSearch tells every completed trial as COMPLETE with its last (low-budget) value,
    which makes TPE model early-stopped trials as if they had finished. Their intermediate values
    were already reported step by step; telling them PRUNED keeps them out of TPE's "complete"
    set while TPE still uses their last intermediate value, the way Optuna's own pruners do.
    """

    def on_trial_complete(self, trial_id: str, result: Optional[dict] = None, error: bool = False):
        if result and not error and result.get("status") != "diverged":
            budget = result.get("epochs_budget")
            if budget is not None and result.get("epoch", budget) < budget:
                return super().on_trial_complete(trial_id, None, error=False)  # -> PRUNED
        return super().on_trial_complete(trial_id, result, error)


def make_searcher(spec: StudySpec, metric: str, mode: str):
    """Searcher (or None for grid) for the study's search.algorithm."""
    algo = spec.search.algorithm
    if algo == "grid":
        return None
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class HonestOptunaSearch(_HonestOptuna, OptunaSearch):
        pass

    if algo == "optuna":
        sampler = optuna.samplers.TPESampler(seed=spec.search.seed, n_startup_trials=min(10, max(2, spec.search.num_samples // 4)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=spec.search.seed)
    return HonestOptunaSearch(space=define_by_run(spec), metric=metric, mode=mode, sampler=sampler)


def param_space(spec: StudySpec) -> dict:
    """Tune param_space: the grid for grid studies, empty for searcher-driven ones."""
    if spec.search.algorithm != "grid":
        return {}
    from ray import tune

    return {"grid": tune.grid_search(expand_grid(spec))}


def trial_params(config: dict) -> dict:
    """The study parameters of a trial, whichever way they were produced."""
    if "grid" in config:
        return dict(config["grid"])
    return {k: v for k, v in config.items() if not k.startswith("_")}
