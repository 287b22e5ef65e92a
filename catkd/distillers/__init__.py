"""Distillers by the reference's DISTILLER.TYPE names: NONE (alias vanilla), KD, DKD, CAT_KD (alias CAT-KD)."""
from catkd.distillers.registry import DISTILLERS
from catkd.distillers.base import Distiller
from catkd.distillers import vanilla, kd, dkd, cat_kd  # noqa: F401  (registration)

__all__ = ["DISTILLERS", "Distiller", "build_distiller"]


def build_distiller(cfg, student, teacher, num_classes: int) -> Distiller:
    return DISTILLERS.get(cfg.DISTILLER.TYPE).from_config(cfg, student, teacher, num_classes)
