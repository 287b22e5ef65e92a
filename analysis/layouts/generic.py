"""The generic table: test top-1 by every setting that varies (any study without its own layout)."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import Table, cell, fmt
from analysis.layouts.registry import layout
from analysis.load import Study, varied_columns
from analysis.selection import epoch_label, groups, rows_to_report, value_column


@layout("generic")
def generic(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    keys = varied_columns(trials)
    rows = []
    for g in groups(trials):
        status = ", ".join(f"{n} {s}" for s, n in g.trials["status"].value_counts().items()) \
            if "status" in g.trials else ""
        rows.append([fmt(g.get(k)) for k in keys] + [cell(g.trials[value]), status])
    rows.sort(key=lambda r: [str(x) for x in r])
    title = f"{study.name}: {epoch_label(epoch)} by configuration ({stage})"
    return [Table("generic", title, keys + [epoch_label(epoch), "status"], rows, notes)]
