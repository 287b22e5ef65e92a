"""Partial CAMs: strategy (top / lowest) x n, the CAMs transferred, beside all classes; and the data of
the paper's figure (top-1 against n, one line per strategy, all classes as a reference line)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from analysis.cells import Table, t_interval
from analysis.layouts.registry import layout
from analysis.layouts.common import ablation_note, pivot
from analysis.load import Study, classes_of
from analysis.names import DISPLAY, NUMS, PARTIAL, STRATEGY
from analysis.selection import Group, epoch_label, groups, rows_to_report, value_column

ALL = "all CAMs"
STRATEGIES = {0: "top-n", 1: "lowest-n"}  # CAT_KD.Strategy: 0 keeps the n top-scoring classes, 1 the lowest


def strategy_of(g: Group) -> str:
    """A group's row: "all CAMs" (no partial transfer), "top-n" or "lowest-n"."""
    if not g.get(PARTIAL):
        return ALL
    s = g.get(STRATEGY)
    return STRATEGIES.get(s, str(s))


@layout("partial_cams")
def partial_cams(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    n_classes = classes_of(trials)

    def col(g: Group) -> Any:
        return g.get(NUMS) if g.get(PARTIAL) else f"all ({n_classes})"

    t = pivot(groups(trials), value, lambda g: (strategy_of(g),), col, ["CAMs transferred"], "partial_cams",
              f"{study.name}: strategy x n (CAMs transferred), {epoch_label(epoch)}")
    t.headers = t.headers[:1] + [h if h.startswith("all") else f"{DISPLAY[NUMS]} = {h}" for h in t.headers[1:]]
    t.notes = notes + [ablation_note(paper or {}, "partial_cams", study.smoke)]
    return [t]


@dataclass
class Point:
    """Top-1 over the seeds of one configuration: mean, 95 % t half-width (None with one seed), seeds."""
    mean: float
    half: Optional[float]
    seeds: int


@dataclass
class PartialCamsFigure:
    lines: dict[str, list[tuple[int, Point]]] = field(default_factory=dict)  # strategy -> [(n, point)], n ascending
    reference: Optional[Point] = None  # all classes' CAMs
    classes: int = 0


def figure_data(study: Study, epoch: str) -> PartialCamsFigure:
    """What the figure draws, from the trials the table reports (the same groups, the same value
    column): per strategy, (n, mean ± 95 % Student t half-width over seeds); all classes as the reference."""
    trials, _, _ = rows_to_report(study)
    value = value_column(epoch)
    fig = PartialCamsFigure(classes=classes_of(trials))
    pooled: dict[tuple[str, Any], list] = {}  # groups differing in a setting the figure does not show: pooled, as the table does
    for g in groups(trials):
        key = (strategy_of(g), None if strategy_of(g) == ALL else g.get(NUMS))
        pooled.setdefault(key, []).extend(g.trials[value].tolist())
    for (label, n), vals in pooled.items():
        mean, half, seeds = t_interval(vals)
        if not seeds:
            continue
        point = Point(mean, half, seeds)
        if label == ALL:
            fig.reference = point
        elif n is not None:
            fig.lines.setdefault(label, []).append((int(n), point))
    order = list(STRATEGIES.values())
    fig.lines = {k: sorted(fig.lines[k], key=lambda p: p[0])
                 for k in sorted(fig.lines, key=lambda k: (order.index(k) if k in order else len(order), k))}
    return fig
