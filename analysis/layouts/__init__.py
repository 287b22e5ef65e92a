"""The table layout of each kind of study: one module per layout, registered by name
(analysis.layouts.registry). Every module of this package is imported here, so a layout is added
by adding its module; no list to edit."""
import importlib
import pkgutil

from analysis.layouts.registry import FIGURES, LAYOUTS, figure, layout, layout_of

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["FIGURES", "LAYOUTS", "figure", "layout", "layout_of"]
