"""Helpers shared by the tests that run studies in subprocesses."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

# A tiny valid CAT-KD study (full and --smoke) shared by the study and bad-input tests.
TINY = """\
name: tiny
description: a tiny CAT-KD study for the tests
base: cifar100/CAT_KD/res56_res20
fixed:
  normalize: true
  DATASET.VAL_SIZE: 5000   # the real study tunes on validation too (--smoke checks it first)
space:
  beta: {loguniform: [1, 100]}
  partial_cams: {choice: [true, false]}
  cam_count: {choice: [1, 2], when: {partial_cams: true}}
search: {algorithm: optuna, num_samples: 6, seed: 0}
scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
metric: val_acc
seeds: [0]
max_concurrent: 1
smoke:
  epochs: 4
  num_samples: 6
  teacher: resnet8
  student: resnet8
  teacher_epochs: 2
  grace_period: 3  # at epochs 1-2 every trial is still at chance (val 25 %): ASHA sees only ties
  # 16-pixel images: the code of 32-pixel ones at a quarter of the compute (the trials still learn and
  # draw apart by ASHA's rung); the tests that need CIFAR's 32 pixels set them themselves
  dataset: {NUM_CLASSES: 4, TRAIN_PER_CLASS: 100, TEST_PER_CLASS: 30, IMAGE_SIZE: 16}
  val_size: 60
  fixed: {lr: 0.1}
  max_concurrent: 1
"""


def script(name: str):
    """scripts/<name>.py loaded as a module, so a test calls its main() in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def seed_smoke_teacher(study, storage: Path, cache: Path, sets: dict | None = None) -> None:
    """Put a --smoke study's teacher where its driver looks first (<storage>/.cache/teachers), trained
    in `cache` the first time a test asks for it: the study then says 'cached' instead of training it.
    `study` is a loaded smoke StudySpec or a study file (loaded with --smoke and `sets`)."""
    from catkd.study.load import load_study
    from catkd.study.preflight import absolutise, ensure_smoke_teacher

    spec = study if not isinstance(study, (str, Path)) else load_study(Path(study), smoke=True, sets=sets or {})
    teacher = ensure_smoke_teacher(absolutise(spec)[0], cache)  # as run_study calls it
    if teacher is not None:
        shutil.copytree(teacher.parent, Path(storage) / ".cache" / "teachers" / teacher.parent.name,
                        dirs_exist_ok=True)


def kill_orphans(ray_tmp: Path) -> None:
    """SIGKILL the Ray processes a killed driver left behind (their command line names our RAY_TMPDIR).
    Never `ray stop`: it would kill every Ray process on the host."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if str(ray_tmp) in args and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def stop_study(proc: subprocess.Popen, ray_tmp: Path) -> None:
    """Stop a study driver started by a test (SIGINT, then kill) and the Ray processes it left."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    kill_orphans(ray_tmp)


def epoch_rows(text: str | bytes) -> list[dict]:
    """The epoch rows of a Tune result.json (a line cut by a kill skipped; a diverged marker is no epoch)."""
    import json

    rows = []
    for line in (text.decode() if isinstance(text, bytes) else text).splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "epoch" in r and r.get("status") != "diverged":
            rows.append(r)
    return rows


def restorable(exp: Path) -> list[Path]:
    """The trials of a killed stage that Tune will restore: a checkpoint, and no final row yet."""
    return [d for d in sorted(exp.glob("trial_*")) if list(d.glob("checkpoint_*"))
            and not ((d / "result.json").is_file() and (epoch_rows((d / "result.json").read_text()) or [{}])[-1].get("done"))]


def leave_checkpoint_race(exp: Path) -> int:
    """Leave what a driver killed on a loaded machine can leave: Tune had saved a running trial's next
    checkpoint and deleted the one its saved state names. Renaming each trial's newest checkpoint up a
    number (for the trials Tune will restore) does that. Returns how many trials it did it to."""
    trials = restorable(exp)
    for d in trials:
        newest = sorted(d.glob("checkpoint_*"))[-1]
        newest.rename(newest.with_name(f"checkpoint_{int(newest.name.split('_')[1]) + 1:06d}"))
    return len(trials)


def train_straight(trial_dir: Path, out: Path) -> list[tuple]:
    """(epoch, train loss, test accuracy) of each epoch of a trial's own config (`run/config.yaml`, what
    its Trainer was built from: the study's settings, its data, its teacher) trained straight through
    in this process, with the one thread a trial computes with."""
    import torch

    from catkd import train
    from catkd.train import load_config

    cfg = load_config(Path(trial_dir) / "run" / "config.yaml", quiet=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return [(m["epoch"], m["train_loss"], m["test_acc"]) for m in train.run(cfg, out_dir=out, log=lambda s: None).history]
    finally:
        torch.set_num_threads(threads)


def students_experiment(root: Path) -> Path:
    """A finished experiment with one trained student (its run's config and final checkpoint), as a
    transfer study's `from:` reads it; the checkpoint's bytes are not weights (nothing loads them)."""
    import pandas as pd
    import yaml

    run = Path(root) / "source" / "trial_0" / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"DISTILLER": {"TYPE": "NONE", "STUDENT": "resnet8x4"},
                                                     "SOLVER": {"EPOCHS": 240}, "EXPERIMENT": {"SEED": 0}}))
    (run / "ckpt_epoch_240.pth").write_bytes(b"weights")
    pd.DataFrame([{"trial_id": "0", "stage": "search", "status": "finished", "trial_dir": str(run.parent)}]).to_parquet(
        run.parents[1] / "trials.parquet")
    return run.parents[1]
