"""Distillers by the reference's DISTILLER.TYPE names (NONE alias vanilla, KD, DKD, CAT_KD alias CAT-KD, ...).

Every module of this package is imported here, so a method is added by adding its module: it
declares its config section (`catkd.config.config_section`) and registers its Distiller in
DISTILLERS; no list to edit.
"""
import importlib
import pkgutil

from catkd.distillers.registry import DISTILLERS
from catkd.distillers.base import Distiller

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["DISTILLERS", "Distiller", "build_distiller"]


def build_distiller(cfg, student, teacher, num_classes: int, timing: bool = False) -> Distiller:
    """The configured method on these models (timing: for a speed measurement, `Distiller.for_timing`).
    A pair it cannot run (stage shapes, channels) is a ConfigError (exit 2 at the command line),
    whichever ValueError its construction raised."""
    from catkd.config import ConfigError
    from catkd.distillers.base import construction_error

    kind = DISTILLERS.get(cfg.DISTILLER.TYPE)
    try:
        return (kind.for_timing if timing else kind.from_config)(cfg, student, teacher, num_classes)
    except ConfigError:
        raise
    except (ValueError, NotImplementedError) as e:
        raise construction_error(cfg, e) from None
