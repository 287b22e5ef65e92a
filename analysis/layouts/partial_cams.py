"""Partial CAMs: strategy (top / lowest) x n, the CAMs transferred, beside all classes."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import Table
from analysis.layouts.registry import layout
from analysis.layouts.common import ablation_note, pivot
from analysis.load import Study, classes_of
from analysis.names import DISPLAY, NUMS, PARTIAL, STRATEGY
from analysis.selection import Group, epoch_label, groups, rows_to_report, value_column


@layout("partial_cams")
def partial_cams(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    n_classes = classes_of(trials)

    def row(g: Group) -> tuple:
        if not g.get(PARTIAL):
            return ("all CAMs",)
        s = g.get(STRATEGY)
        return ({0: "top-n", 1: "lowest-n"}.get(s, str(s)),)

    def col(g: Group) -> Any:
        return g.get(NUMS) if g.get(PARTIAL) else f"all ({n_classes})"

    t = pivot(groups(trials), value, row, col, ["CAMs transferred"], "partial_cams",
              f"{study.name}: strategy x n (CAMs transferred), {epoch_label(epoch)}")
    t.headers = t.headers[:1] + [h if h.startswith("all") else f"{DISPLAY[NUMS]} = {h}" for h in t.headers[1:]]
    t.notes = notes + [ablation_note(paper or {}, "partial_cams", study.smoke)]
    return [t]
