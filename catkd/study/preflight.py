"""Pre-flight, before Ray starts: the dataset and teacher files are there, paths are absolute, and
(--smoke) the small teacher is trained once and cached."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Optional

from catkd.config import Config, data_root
from catkd.study.checks import run_config
from catkd.study.progress import say
from catkd.study.keys import SELECT_KEYS
from catkd.study.spec import SMOKE_DATA, StudyError, StudySpec, arms, base_choices, expand_grid


# ---- pre-flight (no Ray yet) --------------------------------------------------------------------
def probe_configs(spec: StudySpec) -> list[Config]:
    """Run configs that cover every finite choice (teachers, presets, datasets) of the study."""
    if spec.search.algorithm == "grid":
        params = expand_grid(spec)
    else:  # each arm, with every finite choice of the models, distiller and data it searches
        params = []
        for arm in arms(spec):
            ps = [dict(arm.constants)]
            for name, dim in arm.space.items():
                if dim.values is not None and name in (*SELECT_KEYS, "DISTILLER.TEACHER", "DISTILLER.TYPE", "DATASET.TYPE"):
                    ps = [{**p, name: v} for p in ps for v in dim.values]
            params += ps
    return [run_config(spec, p) for p in params]


# the settings that change a distiller's teacher targets, so its teacher cache store
TARGET_KEYS = ("CAT_KD.LOSS.CAM_RESOLUTION", "CAT_KD.IF_BINARIZE", "DISTILLER.TYPE")


def target_variant_configs(spec: StudySpec) -> list[Config]:
    """One run config per finite value of each dimension that changes the teacher targets (R,
    binarize, the distiller): with the probe configs, every teacher cache store the study can use."""
    out = []
    for g in spec.subgrids:
        base = (base_choices(g) or [{}])[0]  # the sub-grid's (first) method
        for name, dim in g.items():
            if name in TARGET_KEYS and dim.values is not None:
                out += [run_config(spec, {**base, **(dim.when or {}), name: v}) for v in dim.values]
    return out


def preflight(spec: StudySpec, source: str) -> None:
    """Datasets and teacher checkpoints must be there before Ray starts: exit 2 naming every one that
    is missing, each with how to get it."""
    from catkd.distillers import DISTILLERS
    from catkd.models.weights import teacher_hint, teacher_path

    missing: dict[str, str] = {}  # what -> the message (each named once)
    for cfg in probe_configs(spec):
        if cfg.DATASET.TYPE == "cifar100" and not cfg.DATASET.DOWNLOAD:
            d = data_root(cfg) / "cifar-100-python"
            if not (d / "train").is_file():
                missing[str(d)] = (
                    f"CIFAR-100 not found: looked at {d}. Put the python version there "
                    "(set CATKD_DATA or fixed.DATASET.ROOT), or set fixed.DATASET.DOWNLOAD: true "
                    "where the network allows; --smoke runs on the embedded synthetic data")
        if cfg.DATASET.TYPE == "imagenet":
            d = data_root(cfg) / "imagenet"
            if not ((d / "train").is_dir() and (d / "val").is_dir()):
                missing[str(d)] = (
                    f"ImageNet not found: looked at {d}/train and {d}/val (one folder per class, as "
                    "ImageFolder reads them; set CATKD_DATA or fixed.DATASET.ROOT); --smoke runs on a small "
                    "folder of JPEGs it writes itself")
        if cfg.DATASET.TYPE in ("stl10", "tiny_imagenet"):
            from catkd.data import stl10, tiny_imagenet

            data = stl10 if cfg.DATASET.TYPE == "stl10" else tiny_imagenet
            why = data.missing(data_root(cfg))
            if why:
                missing[str(data_root(cfg) / data.FOLDER)] = why
        if DISTILLERS.get(cfg.DISTILLER.TYPE).needs_teacher:
            t = teacher_path(cfg)
            if not t.is_file():
                missing[str(t)] = f"teacher {cfg.DISTILLER.TEACHER} not found: looked at {t}; {teacher_hint(cfg)}"
    if missing:
        raise StudyError("\n".join(f"{source}: {m}" for m in missing.values()))


def absolutise(spec: StudySpec) -> tuple[StudySpec, dict[str, str]]:
    """Resolve relative paths against the driver's directory (trials run in their own)."""
    fixed = dict(spec.fixed)
    for key in ("DATASET.ROOT", "DISTILLER.TEACHER_CKPT"):
        if fixed.get(key):
            fixed[key] = str(Path(fixed[key]).expanduser().resolve())
    env = {
        "CATKD_DATA": str(Path(os.environ.get("CATKD_DATA") or "./data").expanduser().resolve()),
        "CATKD_TEACHERS": str(
            Path(os.environ.get("CATKD_TEACHERS") or "./download_ckpts/cifar_teachers").expanduser().resolve()
        ),
    }
    env.update({k: v for k, v in os.environ.items() if k.startswith("CATKD_INJECT_")})
    base = spec.base
    if Path(base).is_file():
        base = str(Path(base).resolve())
    return spec.model_copy(update={"fixed": fixed, "base": base}), env


def ensure_smoke_teacher(spec: StudySpec, cache: Path) -> Optional[Path]:
    """--smoke: train the small teacher once on the synthetic data and cache it."""
    from catkd.distillers import DISTILLERS

    if not any(DISTILLERS.get(c.DISTILLER.TYPE).needs_teacher for c in probe_configs(spec)):
        return None
    cfg = run_config(spec, {}).model_copy(deep=True)
    cfg = cfg.model_validate({
        **cfg.to_dict(),
        "DISTILLER": {"TYPE": "NONE", "STUDENT": spec.smoke.teacher, "TEACHER": spec.smoke.teacher},
        "SOLVER": {**cfg.SOLVER.model_dump(), "EPOCHS": spec.smoke.teacher_epochs, "LR": 0.05,
                   "LR_DECAY_STAGES": [max(1, int(spec.smoke.teacher_epochs * 0.75))]},
        "EXPERIMENT": {**cfg.EXPERIMENT.model_dump(), "SEED": 0},
        "DATASET": {**cfg.DATASET.model_dump(), "REDUCTION": False},
        "CAT_KD": {},
        "RUN": {**cfg.RUN.model_dump(), "PROGRESS": "auto"},  # a bar on a terminal, epoch lines always
        # its checkpoints of 4 epochs of its training: the weaker teachers of a weak-teachers smoke study
        "LOG": {**cfg.LOG.model_dump(), "SAVE_CHECKPOINT_FREQ": max(1, spec.smoke.teacher_epochs // 4)},
    })
    key = hashlib.sha1(json.dumps([cfg.DATASET.model_dump(), cfg.SOLVER.model_dump(), spec.smoke.teacher,
                                   cfg.LOG.SAVE_CHECKPOINT_FREQ],
                                  sort_keys=True).encode()).hexdigest()[:12]
    data = "the SYNTHETIC data" if spec.smoke.data == "synthetic" else SMOKE_DATA[spec.smoke.data]
    return train_once(cfg, cache / f"{spec.smoke.teacher}-{key}", f"smoke teacher {spec.smoke.teacher}", data)


def train_once(cfg: Config, out: Path, label: str, data: str = "the SYNTHETIC data") -> Path:
    """Train `cfg` into `out` unless its final checkpoint is there (a directory keyed by what it trains);
    returns that checkpoint, ckpt_epoch_<EPOCHS>.pth."""
    from catkd.engine import Trainer
    from catkd.engine import checkpoint as ckpt

    epochs = cfg.SOLVER.EPOCHS
    path = out / f"ckpt_epoch_{epochs}.pth"
    if path.is_file():
        say(f"{label}: cached at {path}")
        return path
    say(f"{label}: training {epochs} epochs on {data} (once; cached)")
    t0 = time.time()
    # a study killed while this trained continues that training (bit-exact, as any resume): a checkpoint
    # that cannot be loaded is set aside and the model trained from the start
    partial = out / ckpt.FULL
    trainer = lambda: Trainer.from_config(cfg, out_dir=out, log=lambda s: say(f"  {s}"))  # noqa: E731
    try:
        if partial.is_file():
            say(f"{label}: continuing its interrupted training from {partial}")
        result = trainer().fit(resume_from=partial if partial.is_file() else None)
    except ckpt.CheckpointError as e:  # raised only while restoring, before anything is written
        say(f"{label}: {e}; training from the start")
        partial.rename(partial.with_suffix(".unreadable"))
        result = trainer().fit()
    if result.status != "finished":
        raise RuntimeError(f"{label}: training {result.status}")
    say(f"{label}: test top-1 {result.last_test_acc:.2f} in {time.time() - t0:.0f}s -> {path}")
    return path
