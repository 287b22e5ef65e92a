"""CAT without labels: a student trained on the teacher's CAMs alone, beside the same architecture
trained alone with labels; ours, the published number where known, and their difference."""
from __future__ import annotations

from typing import Any

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row
from analysis.layouts.common import ablation_note, method_of, published
from analysis.layouts.registry import layout
from analysis.load import Study
from analysis.names import ONLY_CAT, STUDENT, TEACHER, TYPE
from analysis.selection import epoch_label, groups, rows_to_report, value_column


@layout("cat_without_labels")
def cat_without_labels(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    smoke = study.smoke
    if smoke:
        paper = {}
    rows: dict[tuple[str, str], list] = {}
    for g in groups(trials):
        only_cat = g.get(TYPE) == "CAT_KD" and bool(g.get(ONLY_CAT))
        label = "CAT: teacher's CAMs only, no label read" if only_cat else f"{method_of(g)} (with labels)"
        model = f"{g.get(TEACHER)}->{g.get(STUDENT)}" if g.get(TYPE) != "NONE" else str(g.get(STUDENT))
        rows.setdefault((label, model), []).extend(g.trials[value].tolist())
    body = []
    for (label, model), vals in sorted(rows.items(), key=lambda kv: not kv[0][0].startswith("CAT:")):
        student = model.split("->")[-1]
        entry = (paper.get("vanilla") or {}).get(student) if "->" not in model else None
        pub, _, src = published(entry)
        body.append([label, model, cell(vals), pub, src or "-"])
    notes.append(ablation_note(paper, "cat_without_labels", smoke))
    out = [Table("cat_without_labels", f"{study.name}: CAT trained on CAMs alone, {epoch_label(epoch)}",
                 ["training", "model", "ours", "published", "source"], body, notes)]
    cat = [v for (label, _), v in rows.items() if label.startswith("CAT:")]
    alone = [v for (label, model), v in rows.items() if not label.startswith("CAT:") and "->" not in model]
    if cat and alone:
        out.append(Table("cat_without_labels_difference", f"{study.name}: CAT (no labels) minus the student alone",
                         DIFF_HEADERS, [difference_row("CAT - student alone", cat[0], alone[0])],
                         ["Welch 95 % interval over the seeds."]))
    return out
