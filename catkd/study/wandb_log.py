"""`--log wandb`: one W&B run per trial, every run of a stage kept by one logging actor.

Ray Tune's own WandbLoggerCallback starts two actors per trial (a queue and a logger, each a Python
process importing Ray, and wandb: ~2 s of CPU each), because wandb once allowed one run per process.
wandb's `reinit="create_new"` keeps several runs in one process, so here one actor, on the driver's
node (where the runs' directory is), logs every trial of the stage. Like Ray's, it logs what Tune took
from each trial, result by result, and the driver never waits on it while trials run: a slow W&B server
holds no study up. The runs are finished when their trials end, and all of them when the stage ends.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ray.tune.logger import LoggerCallback

from catkd.tracking import numbers

# how long the stage's end waits for the runs to be written (and uploaded, online), as Ray's callback does
UPLOAD_TIMEOUT_S = 1800


class _Runs:
    """The logging actor: the stage's W&B runs by trial id."""

    def __init__(self, env: dict[str, str]):
        os.environ.update(env)  # the driver's W&B settings (key, mode, directory), wherever Ray started this
        os.environ["WANDB_START_METHOD"] = "thread"  # as in Ray's logger: already a process of its own
        import wandb

        self._wandb, self._runs = wandb, {}

    def start(self, trial_id: str, init: dict[str, Any]) -> None:
        if trial_id not in self._runs:  # a restarted trial goes on with its run
            self._runs[trial_id] = self._wandb.init(reinit="create_new", **init)

    def log(self, trial_id: str, metrics: dict[str, Any], step: Optional[int]) -> None:
        run = self._runs.get(trial_id)
        if run is not None:
            run.log(metrics, step=step)

    def end(self, trial_id: str, failed: bool) -> None:
        run = self._runs.pop(trial_id, None)
        if run is not None:
            run.finish(exit_code=1 if failed else 0)

    def close(self) -> None:
        for trial_id in list(self._runs):
            self.end(trial_id, failed=False)


class WandbCallback(LoggerCallback):
    """One W&B run per trial (id: the trial id, name: the trial), its config `settings(trial.config)`."""

    def __init__(self, project: str, group: str, directory: str, settings: Callable[[dict], dict],
                 mode: Optional[str] = None):
        self._init = {"project": project, "group": group, "dir": directory, "allow_val_change": True,
                      **({"mode": mode} if mode else {})}
        self._settings = settings
        self._actor = None

    def _runs(self):
        if self._actor is None:
            import ray
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            env = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
            self._actor = ray.remote(num_cpus=0, scheduling_strategy=here)(_Runs).remote(env)
        return self._actor

    def log_trial_start(self, trial) -> None:
        self._runs().start.remote(trial.trial_id, {**self._init, "id": trial.trial_id, "name": str(trial),
                                                   "config": self._settings(trial.config)})

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._runs().log.remote(trial.trial_id, numbers(result), result.get("training_iteration"))

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._runs().end.remote(trial.trial_id, failed)

    def on_experiment_end(self, trials, **info) -> None:
        if self._actor is None:
            return
        import ray

        try:
            ray.get(self._actor.close.remote(), timeout=UPLOAD_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a tracker's failure is no failure of the study
            from catkd.study.progress import say

            say(f"W&B: the runs of this stage may be incomplete ({type(e).__name__}: {e})")
        finally:
            ray.kill(self._actor)
            self._actor = None
