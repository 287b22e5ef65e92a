"""Binarization: binarized or not x R, and the difference at each R with its Welch interval."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import DIFF_HEADERS, Table, difference_row, fmt, sortkey
from analysis.layouts.registry import layout
from analysis.layouts.common import B, R, ablation_note, pivot
from analysis.load import Study
from analysis.names import BETA, BIN, DISPLAY, RES
from analysis.selection import epoch_label, groups, rows_to_report, value_column


@layout("binarization")
def binarization(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (bool(g.get(BIN)), g.get(BETA)), lambda g: g.get(RES),
              [DISPLAY[BIN], B], "binarization", f"{study.name}: binarize x R, {epoch_label(epoch)}")
    t.headers = t.headers[:2] + [f"{R} = {h}" for h in t.headers[2:]]
    t.notes = notes + [ablation_note(paper or {}, "binarization", study.smoke)]
    tables = [t]
    by: dict[tuple, list] = {}
    for g in groups(trials):
        by.setdefault((bool(g.get(BIN)), g.get(RES)), []).extend(g.trials[value].tolist())
    rows = [[fmt(r)] + difference_row("binarized - not binarized", by[(True, r)], by[(False, r)])
            for r in sorted({r for _, r in by}, key=sortkey) if (True, r) in by and (False, r) in by]
    if rows:
        tables.append(Table("binarization_differences", f"{study.name}: binarized - not binarized at each R, "
                            f"{epoch_label(epoch)}", [R] + DIFF_HEADERS, rows,
                            ["95 % Welch interval over seeds (the paper's numbers for this ablation are unknown here)."]))
    return tables
