"""The one validation path of a run's config beyond its schema, shared by `catkd.train` (through
`Trainer.from_config`) and the study pre-flight: what the dataset declares (class count, image size)
and what the distiller checks of its own settings against the models' CAM shapes."""
from __future__ import annotations

from typing import Callable

import torch

from catkd.config import Config, ConfigError

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
    family = entry.family
    shapes: Callable[[], dict[str, tuple[int, int]]] = lambda: {  # noqa: E731 (lazy: models built only if asked)
        "teacher": cam_shape(cfg.DISTILLER.TEACHER, family, size),
        "student": cam_shape(cfg.DISTILLER.STUDENT, family, size),
    }
    DISTILLERS.get(cfg.DISTILLER.TYPE).check_config(cfg, k, shapes)
