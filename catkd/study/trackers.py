"""`--log wandb` / `--log mlflow`: one tracked run per trial, through Tune logger callbacks (MLflow: Ray's
own, each result's metrics sent in one batch; W&B: catkd.study.wandb_log, one logging process per
stage instead of Ray's two per trial).

Each trial is a run named by its trial, grouped by study and stage (W&B: project `$WANDB_PROJECT` or
"catkd", group "<study>/<stage>"; MLflow: experiment "<experiment name>", tags study and stage), with
the study's fixed settings and the trial's parameters as the run's config, and every per-epoch
metric. Runs land under the experiment directory unless the trackers' own environment variables
point elsewhere: W&B in `<experiment>/wandb` (`WANDB_DIR`; offline, `wandb sync`-able, when no API
key is configured or `WANDB_MODE=offline`), MLflow in the local store `<experiment>/mlflow.db`
(SQLite: MLflow 3 no longer creates file stores; `MLFLOW_TRACKING_URI` points elsewhere). The extras are optional: `pip install 'catkd[wandb]'` / `'catkd[mlflow]'`.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from catkd.study.progress import say
from catkd.study.spec import StudyError, StudySpec

TRACKERS = {"wandb": ("wandb", "catkd[wandb]"), "mlflow": ("mlflow", "catkd[mlflow]")}


def check_trackers(names: list[str], source: str) -> None:
    """Before anything starts: every asked-for tracker is installed (exit 2 with the pip command)."""
    for n in names:
        module, extra = TRACKERS[n]
        try:
            importlib.import_module(module)
        except ImportError:
            raise StudyError(f"{source}: --log {n}: the {module} package is not installed; "
                             f"install it with: pip install '{extra}'") from None


def _settings(spec: StudySpec, stage: str, trial_config: dict[str, Any]) -> dict[str, Any]:
    from catkd.study.space import trial_params

    fixed = dict(spec.fixed)
    return {"study": spec.name, "stage": stage, "base": spec.base, **fixed, **trial_params(trial_config)}


def tracker_callbacks(names: list[str], spec: StudySpec, exp_dir: Path, name: str, stage: str) -> list[Any]:
    out: list[Any] = []
    if "wandb" in names:
        out.append(_wandb(spec, exp_dir, stage))
    if "mlflow" in names:
        out.append(_mlflow(spec, exp_dir, name, stage))
    return out


def _with_settings(cls, spec: StudySpec, stage: str):
    """A logger callback whose run config is the trial's settings, not only its sampled parameters."""

    class WithSettings(cls):
        def __del__(self):  # Ray's __del__ fails noisily when it runs after Ray's own teardown
            try:
                getattr(super(), "__del__", lambda: None)()
            except Exception:
                pass

        def log_trial_start(self, trial):
            params = trial.config
            trial.config = _settings(spec, stage, params)
            try:
                super().log_trial_start(trial)
            finally:
                trial.config = params

    return WithSettings


def _wandb(spec: StudySpec, exp_dir: Path, stage: str):
    from catkd.study.wandb_log import WandbCallback
    from catkd.tracking import wandb_mode

    if not os.environ.get("WANDB_MODE") and wandb_mode() == "offline":
        os.environ["WANDB_MODE"] = "offline"
        say("W&B: no API key configured: runs are written offline (upload them later with `wandb sync`)")
    wandb_dir = Path(os.environ.get("WANDB_DIR") or exp_dir)
    wandb_dir.mkdir(parents=True, exist_ok=True)
    project = os.environ.get("WANDB_PROJECT") or "catkd"
    group = f"{spec.name}/{stage}"
    say(f"W&B: one run per trial, project {project}, group {group}, in {wandb_dir / 'wandb'}")
    # the logging actor runs in a Ray worker, which need not share the driver's environment (an existing
    # cluster): the mode goes to wandb.init itself
    return WandbCallback(project, group, str(wandb_dir), lambda config: _settings(spec, stage, config),
                         mode=os.environ.get("WANDB_MODE") or None)


def _mlflow(spec: StudySpec, exp_dir: Path, name: str, stage: str):
    # MLflow 3 refuses new file stores ("maintenance mode"): a SQLite store in the experiment directory
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(exp_dir / 'mlflow.db').resolve()}"
    say(f"MLflow: one run per trial, experiment {name}, tag stage={stage}, tracking URI {uri}")
    return _with_settings(batched_mlflow_callback(), spec, stage)(
        tracking_uri=uri, experiment_name=name, tags={"study": spec.name, "stage": stage})


def batched_mlflow_callback():
    """Ray's MLflow logger callback, logging each result's metrics in one request (`log_batch`). Ray's
    logs them one by one, each with a look-up of the run: a database transaction per metric, about a
    tenth of a second of the driver's CPU per epoch of every trial against a SQLite store. The metrics
    are the same: the result flattened with "/", every value that converts to a float, at Ray's step."""
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.result import TIMESTEPS_TOTAL, TRAINING_ITERATION
    from ray.tune.utils import flatten_dict

    class BatchedMLflowLoggerCallback(MLflowLoggerCallback):
        _client = None

        def log_trial_result(self, iteration: int, trial, result: dict) -> None:
            step = result.get(TIMESTEPS_TOTAL) or result[TRAINING_ITERATION]
            now = int(time.time() * 1000)
            metrics = []
            for key, value in flatten_dict(result, delimiter="/").items():
                try:
                    metrics.append(Metric(key, float(value), now, step))
                except (TypeError, ValueError):
                    continue  # not a number: not a metric (as Ray's)
            if self._client is None:  # the store Ray's setup opened (MLflow keeps one per URI)
                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self._client.log_batch(self._trial_runs[trial], metrics=metrics)

    return BatchedMLflowLoggerCallback
