"""The Ray Tune trainable: a thin adapter from `tune` to `catkd.engine.Trainer`.

A trial's config holds only its study parameters; the validated study (and the absolute data and
teacher locations, resolved by the driver because a trial's working directory is its own) arrive
through `tune.with_parameters`. The Trainer's per-epoch `report` hook becomes `tune.report` with a
checkpoint; a restarted trial continues from `tune.get_checkpoint()`. Light imports at module
level: every trial worker imports this module.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def train_trial(config: dict[str, Any], study: dict[str, Any], env: dict[str, str], cpus: float,
                exp_path: str = "", checkpoint_every: int = 1) -> None:
    import torch
    from ray import tune

    from catkd.engine import Trainer
    from catkd.study.results import settings_of, write_settings
    from catkd.study.space import trial_params
    from catkd.study.checks import run_config
    from catkd.study.spec import StudySpec

    os.environ.update(env)  # absolute CATKD_DATA / CATKD_TEACHERS resolved by the driver
    torch.set_num_threads(max(1, int(cpus)))  # Ray gives a worker 1 thread; use the trial's CPUs
    spec = StudySpec.model_validate(study)
    params = trial_params(config)
    cfg = run_config(spec, params).model_copy(deep=True)
    cfg.RUN.PROGRESS = "none"

    out_dir = _run_dir(exp_path, Path(tune.get_context().get_trial_dir()).name)
    # the trial's one record of its settings: from the config it trains with, nothing re-resolved later
    write_settings(out_dir, settings_of(cfg, study, params))
    resume_from = None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            src = Path(d) / "checkpoint.pth"
            if src.is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                resume_from = out_dir / "restored.pth"
                shutil.copyfile(src, resume_from)
    total = cfg.SOLVER.EPOCHS

    cpu0 = _cpu_seconds()

    def report(metrics: dict[str, Any], run_dir: Path) -> None:
        # this process's CPU time (user + system, all threads) since the trial started: what
        # `catkd.bench study` divides by wall x cores
        m = {**metrics, "status": "running", "epochs_budget": total, "trial_cpu_seconds": _cpu_seconds() - cpu0}
        _maybe_inject_worker_exit(m["epoch"], spec.name)
        if m["epoch"] % checkpoint_every == 0 or m["epoch"] == total:
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(_checkpoint_dir(run_dir)))
        else:
            tune.report(m)

    trainer = Trainer.from_config(cfg, out_dir=out_dir, log=lambda s: None, notice=print)  # notices: the trial's log
    result = trainer.fit(report=report, resume_from=resume_from)
    if result.status == "diverged":
        # a final row marks the trial diverged (metric NaN); it returns normally, so it is not retried
        nan = float("nan")
        tune.report({"epoch": result.epochs_done, "status": "diverged", "epochs_budget": total,
                     "val_acc": nan, "test_acc": nan})


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _run_dir(exp_path: str, trial_dir_name: str) -> Path:
    """Where the trial's own files (metrics.jsonl, student_best.pth, ckpt_epoch_*.pth) go.

    <experiment>/<trial dir>/run when the experiment directory is reachable from this worker (a
    local or shared --storage), else the worker's working directory. Written straight to the
    experiment, not to Tune's per-trial staging directory: an actor reused for a new trial
    (reuse_actors) gets no staging directory, and its files would never reach the experiment.
    """
    if exp_path:
        d = Path(exp_path) / trial_dir_name / "run"
        try:
            d.mkdir(parents=True, exist_ok=True)
            return d
        except OSError:
            pass
    return Path.cwd() / "run"


def _checkpoint_dir(run_dir: Path) -> str:
    """A directory holding only the resume checkpoint (Tune copies the whole directory)."""
    d = run_dir / "tune_ckpt"
    d.mkdir(exist_ok=True)
    dst = d / "checkpoint.pth"
    if dst.exists():
        dst.unlink()
    os.link(run_dir / "checkpoint.pth", dst)
    return str(d)


def _maybe_inject_worker_exit(epoch: int, study: str) -> None:
    """Fault injection for the reliability tests: CATKD_INJECT_WORKER_EXIT=<epoch>:<marker file>
    makes the first trial that reaches <epoch> kill its own worker process (os._exit), once."""
    spec = os.environ.get("CATKD_INJECT_WORKER_EXIT")
    if not spec:
        return
    at, marker = spec.split(":", 1)
    if epoch == int(at) and not os.path.exists(marker):
        Path(marker).write_text(f"{study} epoch {epoch} pid {os.getpid()}\n")
        os._exit(1)
