"""Teachers: models trained alone, ours beside the published accuracy."""
from __future__ import annotations

from typing import Any

from analysis.cells import Table, cell, stats
from analysis.layouts.registry import layout
from analysis.layouts.common import published
from analysis.load import Study
from analysis.names import STUDENT
from analysis.selection import epoch_label, groups, rows_to_report, value_column


@layout("teachers")
def teachers(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    if study.smoke:
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
        paper = {}
    vanilla_pub = paper.get("vanilla", {})
    per: dict[str, list] = {}
    for g in groups(trials):
        per.setdefault(str(g.get(STUDENT)), []).extend(g.trials[value].tolist())
    rows = []
    for model, vals in per.items():
        pub, pval, src = published(vanilla_pub.get(model))
        mean, _, n = stats(vals)
        rows.append([model, cell(vals), pub, f"{mean - pval:+.2f}" if n and pval is not None else "-", src or "-"])
    return [Table("teachers", f"{study.name}: models trained alone, {epoch_label(epoch)}",
                  ["model", "ours", "published", "gap (ours - published)", "source"], rows, notes)]
