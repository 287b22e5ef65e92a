"""The paper's main CIFAR-100 table: every pair x method, ours beside the published number, and differences."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row, stats
from analysis.layouts.registry import layout
from analysis.layouts.common import pair_of, published
from analysis.load import Study
from analysis.names import STUDENT, TYPE
from analysis.selection import epoch_label, groups, rows_to_report, value_column


# The main table's methods, left to right, by DISTILLER.TYPE (None: the student trained alone).
MAIN_METHODS = [(None, "student alone"), ("KD", "KD"), ("DKD", "DKD"), ("CAT_KD", "CAT-KD")]


def _ours_published_gap(ours: list, entry: Optional[dict]) -> list[str]:
    """[ours as mean ± std (n), the published value, ours - published]."""
    pub, pval, _ = published(entry)
    mean, _, n = stats(ours)
    gap = f"{mean - pval:+.2f}" if n and pval is not None else "-"
    return [cell(ours), pub, gap]


@layout("main_results")
def main_results(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    if study.smoke:  # synthetic data: CIFAR-100 numbers beside them would mislead
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
        paper = {"dataset": paper.get("dataset", "")}
    vanilla_pub, pairs_pub = paper.get("vanilla", {}), paper.get("pairs", {})
    by_pair: dict[str, dict[str, list]] = {}
    alone: dict[str, list] = {}
    for g in groups(trials):
        typ = g.get(TYPE)
        if typ in (None, "NONE"):
            alone.setdefault(str(g.get(STUDENT)), []).extend(g.trials[value].tolist())
        else:
            by_pair.setdefault(pair_of(g), {}).setdefault(str(typ), []).extend(g.trials[value].tolist())
    rows, sources = [], {}
    pair_notes: list[str] = []
    for pair in by_pair:
        teacher, student = pair.split("->", 1)
        pub = pairs_pub.get(pair, {})
        row = [pair, published(vanilla_pub.get(teacher))[0]]
        for typ, label in MAIN_METHODS:
            entry = vanilla_pub.get(student) if typ is None else pub.get(typ)
            vals = alone.get(student, []) if typ is None else by_pair[pair].get(typ, [])
            row += _ours_published_gap(vals, entry)
            if entry and entry.get("source"):
                sources.setdefault(label, {})[entry["source"]] = True
            if entry and entry.get("note"):
                pair_notes.append(f"{label} {pair}: published {entry['top1']:.2f} — {entry['note']}.")
        rows.append(row)
    paired_students = {p.split("->", 1)[1] for p in by_pair}
    for student, vals in alone.items():
        if student not in paired_students:
            rows.append([f"(alone) {student}", "-", *_ours_published_gap(vals, vanilla_pub.get(student)),
                         *["-"] * (3 * (len(MAIN_METHODS) - 1))])
    headers = ["teacher->student", "teacher (published)"]
    for _, label in MAIN_METHODS:
        headers += [f"{label} (ours)", f"{label} (published)", f"{label} gap"]
    for label, srcs in sources.items():
        notes.append(f"{label} published numbers: {'; '.join(srcs)}.")
    notes += pair_notes
    notes.append(f"Ours: {epoch_label(epoch)}, mean ± std (n) over seeds; gap = our mean - published; "
                 f"published: {paper.get('dataset', '')}.")
    main = Table("main_results", f"{study.name}: CIFAR-100 table ({stage})", headers, rows, notes)
    # methods compared on the same pair: difference of means with its uncertainty over seeds
    labels = dict(MAIN_METHODS)
    diff_rows = []
    for pair in by_pair:
        student = pair.split("->", 1)[1]
        pub = pairs_pub.get(pair, {})

        def vals(typ):
            return alone.get(student, []) if typ is None else by_pair[pair].get(typ, [])

        def pubval(typ):
            e = vanilla_pub.get(student) if typ is None else pub.get(typ)
            return published(e)[1]

        for a, b in (("CAT_KD", "DKD"), ("CAT_KD", "KD"), ("CAT_KD", None), ("DKD", "KD"), ("KD", None)):
            if not vals(a) or not vals(b):
                continue
            pa, pb = pubval(a), pubval(b)
            diff_rows.append([pair] + difference_row(f"{labels[a]} - {labels[b]}", vals(a), vals(b),
                                                     None if pa is None or pb is None else pa - pb))
    tables = [main]
    if diff_rows:
        tables.append(Table("main_results_differences",
                            f"{study.name}: differences between methods on the same pair, {epoch_label(epoch)}",
                            ["teacher->student"] + DIFF_HEADERS, diff_rows,
                            ["95 % confidence interval of the difference of means over seeds (Welch's t); "
                             "n = 1 on a side gives no interval. 'published inside our CI': does the "
                             "difference of the published numbers fall inside it."]))
    return tables
