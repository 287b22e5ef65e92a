"""Study space -> Ray Tune search: Optuna define-by-run (TPE or random sampler) or an explicit grid.

Conditional dimensions (`when:`) are natural in a define-by-run space: a dimension is only
suggested when the dimensions it depends on took the given values, so TPE never sees cam_count
for a trial without partial CAMs. Grids are expanded here into a list of parameter dicts (each
sub-grid, conditions honoured, crossed with the seeds) and handed to `tune.grid_search`.
"""
from __future__ import annotations

from typing import Any, Optional

from catkd.study.results import SEED_KEY
from catkd.study.spec import Arm, Dim, StudySpec, active, arms, expand_grid


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


class DefineByRun:
    """Optuna define-by-run space of a study (a picklable object: Tune saves the searcher)."""

    def __init__(self, spec: StudySpec, arm: Optional[Arm] = None):
        arm = arm or arms(spec)[0]
        self.space, self.constants = arm.space, dict(arm.constants)
        self.order = _ordered(self.space)
        self.seed = spec.seeds[0]

    def __call__(self, trial) -> dict:
        params: dict[str, Any] = dict(self.constants)
        for name in self.order:
            if active(self.space[name], params):
                params[name] = suggest(trial, name, self.space[name])
        # constants: OptunaSearch adds them to the trial's config
        return {**self.constants, SEED_KEY: self.seed}


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
