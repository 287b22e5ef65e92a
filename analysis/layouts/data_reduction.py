"""Data reduction: kept fraction x method, the differences between methods, and classes never seen."""
from __future__ import annotations

from typing import Any, Optional

import pandas as pd

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row, fmt, sortkey
from analysis.layouts.registry import layout
from analysis.layouts.common import ablation_note, method_of, pivot
from analysis.load import Study, classes_of
from analysis.names import CLASSES, RATE
from analysis.selection import epoch_label, groups, rows_to_report, value_column
from catkd.study.results import finite


@layout("data_reduction")
def data_reduction(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    n_classes = classes_of(trials)
    gs = groups(trials)
    full = [g for g in gs if not finite(g.get(CLASSES)) or int(g.get(CLASSES)) >= n_classes]
    fewer = [g for g in gs if g not in full]
    order = {"CAT-KD": 0, "DKD": 1, "KD": 2, "student alone": 3, "CAT (alone)": 4}
    t = pivot(full, value, lambda g: (g.get(RATE),), method_of, ["kept rate"], "data_reduction",
              f"{study.name}: kept fraction of training images x method, {epoch_label(epoch)}",
              col_sort=lambda m: (order.get(m, 9), m))
    t.notes = notes + [ablation_note(paper or {}, "data_reduction", study.smoke)]
    tables = [t]
    by: dict[tuple, list] = {}
    for g in full:
        by.setdefault((g.get(RATE), method_of(g)), []).extend(g.trials[value].tolist())
    rows = []
    for rate in sorted({r for r, _ in by}, key=sortkey):
        for a, b in (("CAT-KD", "KD"), ("CAT-KD", "student alone"), ("KD", "student alone")):
            if (rate, a) in by and (rate, b) in by:
                rows.append([fmt(rate)] + difference_row(f"{a} - {b}", by[(rate, a)], by[(rate, b)]))
    if rows:
        tables.append(Table("data_reduction_differences",
                            f"{study.name}: differences between methods at each kept rate, {epoch_label(epoch)}",
                            ["kept rate"] + DIFF_HEADERS, rows,
                            ["95 % Welch interval over seeds (the paper's numbers for this ablation are unknown here)."]))
    if fewer:
        rows = []
        for g in fewer:
            unseen = _unseen_last(study, g.trials)
            rows.append([method_of(g), f"{int(g.get(CLASSES))} of {n_classes}", fmt(g.get(RATE)),
                         cell(g.trials[value]), cell(unseen)])
        tables.append(Table("data_reduction_unseen",
                            f"{study.name}: classes never seen in training (test_acc_unseen, last epoch)",
                            ["method", "classes kept", "kept rate", epoch_label(epoch),
                             "top-1 % on unseen classes (last epoch)"], rows))
    return tables


def _unseen_last(study: Study, trials: pd.DataFrame) -> list[float]:
    e = study.epochs
    if e.empty or "test_acc_unseen" not in e:
        return []
    out = []
    for tid in trials["trial_id"]:
        rows = e[e["trial_id"] == tid].sort_values("epoch")
        if len(rows):
            out.append(rows["test_acc_unseen"].iloc[-1])
    return out
