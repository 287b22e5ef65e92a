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
    from catkd.study.smoke import has_smoke_data
    from catkd.study.spec import StudySpec

    os.environ.update(env)  # absolute CATKD_DATA / CATKD_TEACHERS resolved by the driver
    torch.set_num_threads(max(1, int(cpus)))  # Ray gives a worker 1 thread; use the trial's CPUs
    study = _fetch_teacher(study)
    spec = StudySpec.model_validate(study)
    if spec.smoke_mode and spec.smoke.data != "synthetic" and not has_smoke_data(spec, spec.fixed["DATASET.ROOT"]):
        # another node than the driver's: the same small files, written here once
        from catkd.fsutil import user_cache_dir
        from catkd.study.smoke import smoke_data

        study = {**study, "fixed": {**study["fixed"], "DATASET.ROOT": str(smoke_data(spec, user_cache_dir() / "data"))}}
        spec = StudySpec.model_validate(study)
    params = trial_params(config)
    cfg = run_config(spec, params).model_copy(deep=True)
    cfg.RUN.PROGRESS = "none"
    gpu_ids = _gpu_ids()

    out_dir, mirror = _run_dir(exp_path, Path(tune.get_context().get_trial_dir()).name)
    # the trial's one record of its settings: from the config it trains with, nothing re-resolved later
    write_settings(out_dir, settings_of(cfg, study, params))
    sync = (lambda: mirror.push(_run_file)) if mirror is not None else (lambda: None)  # noqa: E731
    sync()
    resume_from, recorded = None, None
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            src = Path(d) / "checkpoint.pth"
            if src.is_file():
                out_dir.mkdir(parents=True, exist_ok=True)
                resume_from = out_dir / "restored.pth"
                shutil.copyfile(src, resume_from)
            recorded = _recorded_epoch(Path(d))
    total = cfg.SOLVER.EPOCHS

    cpu0 = _cpu_seconds()
    reported: list[int] = []

    def row(metrics: dict[str, Any]) -> dict[str, Any]:
        reported.append(metrics["epoch"])
        # this process's CPU time (user + system, all threads) since the trial started: what
        # `catkd.bench study` divides by wall x cores
        return {**metrics, "status": "running", "epochs_budget": total, "trial_cpu_seconds": _cpu_seconds() - cpu0,
                "gpu_ids": gpu_ids}

    def report(metrics: dict[str, Any], run_dir: Path) -> None:
        m = row(metrics)
        _maybe_inject_worker_exit(m["epoch"], spec.name)
        sync()  # the run's files in the bucket before the epoch is reported: a restore finds them there
        if m["epoch"] % checkpoint_every == 0 or m["epoch"] == total:
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(_checkpoint_dir(run_dir)))
        else:
            tune.report(m)

    if resume_from is not None and recorded is not None:
        # a checkpoint mended before a resume can hold epochs Tune never recorded: report them first,
        # the numbers of the run that trained them (no checkpoint: the restored one already holds them)
        from catkd.engine.checkpoint import load_full

        for m in load_full(resume_from)["history"]:
            if m["epoch"] > recorded:
                tune.report(row(m))
    trainer = Trainer.from_config(cfg, out_dir=out_dir, log=lambda s: None, notice=print)  # notices: the trial's log
    try:
        result = trainer.fit(report=report, resume_from=resume_from)
        sync()
    finally:
        if mirror is not None:
            mirror.remove_local()
    if result.status == "finished" and not reported and result.history:
        # restored from a checkpoint that had already trained the last epoch (a driver killed after the
        # trial's last checkpoint, before Tune saved that epoch's result): that epoch is reported again,
        # the same numbers from the run's history, or Tune would end the trial a row short
        report(result.history[-1], result.out_dir)
    if result.status == "diverged":
        # a final row marks the trial diverged (metric NaN); it returns normally, so it is not retried
        nan = float("nan")
        tune.report({"epoch": result.epochs_done, "status": "diverged", "epochs_budget": total,
                     "val_acc": nan, "test_acc": nan})


def _recorded_epoch(checkpoint_dir: Path):
    """The last epoch Tune had recorded for a trial whose checkpoint `checkpoints.mend` wrote (None: a
    checkpoint Tune took itself, whose epochs it recorded)."""
    import json

    from catkd.study.checkpoints import RECORDED

    f = checkpoint_dir / RECORDED
    return int(json.loads(f.read_text())["epoch"]) if f.is_file() else None


def _gpu_ids() -> str:
    """The GPUs Ray gave this trial (logical ids, "" for none), as text: "0" or "0,1". A trial given a
    GPU where torch sees no CUDA trains on the CPU, and says so once in its log."""
    import ray
    import torch

    ids = [str(i) for i in ray.get_gpu_ids()]
    if ids and not torch.cuda.is_available():
        print(f"catkd: Ray gave this trial GPU {','.join(ids)}, but torch sees no CUDA here: training on the CPU",
              flush=True)
    return ",".join(ids)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _run_dir(exp_path: str, trial_dir_name: str):
    """Where the trial's own files (settings.json, metrics.jsonl, student_best.pth, ckpt_epoch_*.pth)
    go, and the Mirror that puts them in the bucket (None on a disk).

    <experiment>/<trial dir>/run when the experiment is a local or shared directory: written straight
    to the experiment, not to Tune's per-trial staging directory (an actor reused for a new trial, with
    reuse_actors, gets none, and its files would never reach the experiment). In object storage: a
    local scratch directory, put back after every epoch to <experiment>/<trial dir>/run; a trial
    restored on another node first fetches what is there (its metrics.jsonl goes on growing).
    """
    from catkd.storage import Mirror, is_uri, location, scratch_dir

    if is_uri(exp_path):
        mirror = Mirror(scratch_dir(trial_dir_name), location(exp_path) / trial_dir_name / "run")
        mirror.pull(_run_file)
        return mirror.local, mirror
    if exp_path:
        d = Path(exp_path) / trial_dir_name / "run"
        try:
            d.mkdir(parents=True, exist_ok=True)
            return d, None
        except OSError:
            pass
    return Path.cwd() / "run", None


def _run_file(rel: str) -> bool:
    """A run file the bucket keeps: not the resume checkpoint, which Tune keeps as its checkpoint."""
    return rel.split("/")[0] not in ("checkpoint.pth", "restored.pth", "tune_ckpt")


def _fetch_teacher(study: dict[str, Any]) -> dict[str, Any]:
    """A teacher checkpoint given as a URI (the smoke teacher of a study in object storage) is fetched
    once per node into the user cache, keyed by URI and size (file-locked: trials start together)."""
    import hashlib

    from filelock import FileLock

    from catkd.fsutil import user_cache_dir
    from catkd.storage import is_uri, location

    uri = (study.get("fixed") or {}).get("DISTILLER.TEACHER_CKPT")
    if not uri or not is_uri(str(uri)):
        return study
    src = location(uri)
    size = src.fs.get_file_info(src.path).size
    key = hashlib.sha1(f"{uri}:{size}".encode()).hexdigest()[:16]
    dst = user_cache_dir() / "fetched" / key / Path(src.path).name
    dst.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dst) + ".lock"):
        if not dst.is_file() or dst.stat().st_size != size:
            src.download(dst)
    return {**study, "fixed": {**study["fixed"], "DISTILLER.TEACHER_CKPT": str(dst)}}


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
