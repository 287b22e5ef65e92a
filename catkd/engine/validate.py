"""The one validation path of a run's config beyond its schema, shared by `catkd.train` (through
`Trainer.from_config`) and the study pre-flight: the names of models and distillers (the registries
live a floor above catkd.config), what the dataset declares (class count, image size) and what the
distiller checks of its own settings against the models' CAM shapes.

`load_run_config` / `build_run_config` are catkd.config's loaders with the methods' sections
registered and the names checked: what every entry point (train, study, analysis) builds a run from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import torch

from catkd.config import Config, ConfigError, build_config, notice, read_yaml, resolve_preset

_CAM_SHAPES: dict[tuple[str, str, int], tuple[int, int]] = {}


def cam_shape(model_name: str, family: str, image_size: int) -> tuple[int, int]:
    """H x W of a model's CAMs for an input of image_size (a probe forward, remembered per process)."""
    from catkd.models import build_model

    key = (family, model_name, image_size)
    if key not in _CAM_SHAPES:
        m = build_model(model_name, num_classes=2, family=family).eval()
        with torch.no_grad():
            h, w = m(torch.zeros(1, 3, image_size, image_size))[1]["cams"].shape[-2:]
        _CAM_SHAPES[key] = (int(h), int(w))
    return _CAM_SHAPES[key]


def validate_run(cfg: Config) -> None:
    """Raise ConfigError naming the key for settings that cannot work together (no data loaded)."""
    from catkd.data import dataset_entry
    from catkd.distillers import DISTILLERS

    entry = dataset_entry(cfg)
    k, size = entry.num_classes(cfg), entry.image_size(cfg)
    d = cfg.DATASET
    if d.REDUCTION and d.RESERVED_CLASS_NUM > k:
        raise ConfigError(f"DATASET.RESERVED_CLASS_NUM: {d.RESERVED_CLASS_NUM} is more than the {k} classes")
    if cfg.DISTILLER.TEACHER_EPOCH is not None and d.TYPE == "imagenet" and not cfg.DISTILLER.TEACHER_CKPT:
        raise ConfigError("DISTILLER.TEACHER_EPOCH: the ImageNet teachers are torchvision's final weights, with no "
                          "checkpoints of earlier epochs; set DISTILLER.TEACHER_CKPT to one of your own teacher's "
                          "checkpoints (ckpt_epoch_<E>.pth are looked for beside it)")
    family = entry.family
    shapes: Callable[[], dict[str, tuple[int, int]]] = lambda: {  # noqa: E731 (lazy: models built only if asked)
        "teacher": cam_shape(cfg.DISTILLER.TEACHER, family, size),
        "student": cam_shape(cfg.DISTILLER.STUDENT, family, size),
    }
    DISTILLERS.get(cfg.DISTILLER.TYPE).check_config(cfg, k, shapes)


def build_run_config(raw: dict, source: str = "<config>", overrides: Optional[dict[str, Any]] = None,
                     quiet: bool = False) -> Config:
    """catkd.config.build_config with every method's section registered, then check_names."""
    import catkd.distillers  # noqa: F401  (its modules register their config sections)

    cfg = build_config(raw, source, overrides, quiet)
    check_names(cfg, source, quiet)
    return cfg


def config_from_dict(d: dict) -> Config:
    """A run config saved as a dict (a checkpoint's, a job file's, a trial's) with every method's
    section registered: importing catkd.config alone would not know CAT_KD, KD, DKD, ..."""
    import catkd.distillers  # noqa: F401  (its modules register their config sections)

    return Config.model_validate(d)


def load_run_config(path: str | Path, overrides: Optional[dict[str, Any]] = None, quiet: bool = False) -> Config:
    """A config file (a packaged preset or the reference's, unchanged) plus dotted overrides, checked."""
    p = resolve_preset(str(path))
    return build_run_config(read_yaml(p), str(p), overrides, quiet)


def check_names(cfg: Config, source: str, quiet: bool = True) -> None:
    """Names that refer to registries: fail at load time with the key, not deep in a run.

    Aliases (`vanilla`, `CAT-KD`, the reference's ImageNet `MobileNetV2`, ...) are replaced by the
    registered name here, so results, reports and published-number joins see one name per thing.
    Every wrong name is reported in one ConfigError.
    """
    from catkd.distillers import DISTILLERS
    from catkd.models import canonical_model_name, model_alias_note, model_names

    family = "imagenet" if cfg.DATASET.TYPE == "imagenet" else "cifar"
    errors = []
    needs_teacher = True  # an unknown distiller: check both models too
    if cfg.DISTILLER.TYPE not in DISTILLERS:
        errors.append(f"{source}: DISTILLER.TYPE: unknown distiller {cfg.DISTILLER.TYPE!r}; "
                      f"known: {', '.join(DISTILLERS.names())}")
    else:
        cfg.DISTILLER.TYPE = DISTILLERS.canonical(cfg.DISTILLER.TYPE)
        needs_teacher = DISTILLERS.get(cfg.DISTILLER.TYPE).needs_teacher
    known = model_names(family)
    for role in ["STUDENT"] + (["TEACHER"] if needs_teacher else []):
        name = getattr(cfg.DISTILLER, role)
        try:
            canon = canonical_model_name(name, family)
        except KeyError:
            errors.append(f"{source}: DISTILLER.{role}: unknown {family} model {name!r}; known: {', '.join(known)}")
            continue
        if canon != name:
            note = model_alias_note(name, family)
            if note and not quiet:
                notice(f"{source}: DISTILLER.{role}: {name!r} read as {canon!r} ({note})")
            setattr(cfg.DISTILLER, role, canon)
    if errors:
        raise ConfigError("\n".join(errors))
