"""Report layouts by name: each layout module registers the function that builds its study's tables
(`@layout("beta_sweep")`); the study file's `report:` key, or the study's name, picks one."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from analysis.cells import Table
    from analysis.load import Study

Layout = Callable[["Study", str, dict[str, Any]], list["Table"]]  # (study, epoch rule, paper.yaml) -> tables
LAYOUTS: dict[str, Layout] = {}


Figure = Callable[["Study", Any, str], Any]  # (study, output directory, epoch rule) -> the PNG's path, or None
FIGURES: dict[str, list[Figure]] = {}  # layout name -> the figures a layout draws besides the common plots


def figure(name: str) -> Callable[[Figure], Figure]:
    """Register a figure of layout `name` (drawn by analysis.plots.all_plots for studies of that layout)."""
    def deco(fn: Figure) -> Figure:
        FIGURES.setdefault(name, []).append(fn)
        return fn

    return deco


def layout(name: str) -> Callable[[Layout], Layout]:
    def deco(fn: Layout) -> Layout:
        if name in LAYOUTS:
            raise ValueError(f"report layout {name!r} registered twice")
        LAYOUTS[name] = fn
        return fn

    return deco


def layout_of(study: "Study") -> str:
    """The study file's `report:` key, else the layout named like the study, else generic."""
    chosen = study.spec.get("report")
    if chosen:
        return chosen if chosen in LAYOUTS else "generic"
    return study.name if study.name in LAYOUTS else "generic"
