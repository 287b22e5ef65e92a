"""The paper's main CIFAR-100 table: one row per method (grouped as the paper groups them), one column
per teacher -> student pair, ours beside the published number and the gap; the best of ours per
column marked. A tidy CSV of the same cells, and CAT-KD's differences from the other methods."""
from __future__ import annotations

from typing import Any, Optional

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row, stats
from analysis.layouts.common import FAMILIES, entry_note, method_info, published
from analysis.layouts.registry import layout
from analysis.load import Study
from analysis.names import STUDENT, TEACHER, TYPE
from analysis.selection import epoch_label, groups, rows_to_report, value_column

BEST = "★"
ALONE = "NONE"
FAMILY_TITLE = {"none": "-", "feature": "feature-based", "logit": "logit-based", "attention/CAM": "attention/CAM-based"}


def _family_rank(family: str) -> int:
    order = ("none", *FAMILIES)
    return order.index(family) if family in order else len(order)


def _columns(by_pair: dict, pairs_pub: dict) -> list[str]:
    """The pairs with results, in the paper's order (paper.yaml), then any others as they come."""
    known = [p for p in pairs_pub if p in by_pair]
    return known + [p for p in by_pair if p not in known]


@layout("main_results")
def main_results(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    if study.smoke:  # synthetic data: CIFAR-100 numbers beside them would mislead
        notes.append("SYNTHETIC/SMOKE: published CIFAR-100 numbers are not joined.")
        paper = {"dataset": paper.get("dataset", "")}
    vanilla_pub, pairs_pub = paper.get("vanilla", {}), paper.get("pairs", {})
    by_pair: dict[str, dict[str, list]] = {}   # pair -> distiller type -> values
    alone: dict[str, list] = {}                # student -> values of the student trained alone
    for g in groups(trials):
        typ = str(g.get(TYPE) or ALONE)
        vals = g.trials[value].tolist()
        if method_info(typ)[1] == "none":
            alone.setdefault(str(g.get(STUDENT)), []).extend(vals)
        else:
            by_pair.setdefault(f"{g.get(TEACHER)}->{g.get(STUDENT)}", {}).setdefault(typ, []).extend(vals)
    pairs = _columns(by_pair, pairs_pub)
    students = {p: p.split("->", 1)[1] for p in pairs}

    def ours(typ: str, pair: str) -> list:
        return alone.get(students[pair], []) if typ == ALONE else by_pair[pair].get(typ, [])

    def pub_entry(typ: str, pair: str) -> Optional[dict]:
        return vanilla_pub.get(students[pair]) if typ == ALONE else pairs_pub.get(pair, {}).get(typ)

    types = sorted({t for d in by_pair.values() for t in d} | ({ALONE} if alone else set()),
                   key=lambda t: (_family_rank(method_info(t)[1]), method_info(t)[0].lower()))
    best = {}
    for pair in pairs:  # the best of ours per column, among the distillation methods
        means = {t: stats(ours(t, pair))[0] for t in types if t != ALONE}
        means = {t: m for t, m in means.items() if m is not None}
        if means:
            top = max(means.values())
            best[pair] = {t for t, m in means.items() if m == top}
    rows: list[list[str]] = [["-", "teacher (published)", *(published(vanilla_pub.get(p.split("->")[0]))[0]
                                                           for p in pairs)]]
    long: list[list[Any]] = []
    sources: dict[str, dict[str, bool]] = {}
    entry_notes: list[str] = []
    for typ in types:
        label, family = method_info(typ)
        row = [FAMILY_TITLE.get(family, family), label]
        for pair in pairs:
            vals, entry = ours(typ, pair), pub_entry(typ, pair)
            pub, pval, src = published(entry)
            mean, std, n = stats(vals)
            gap = mean - pval if n and pval is not None else None
            mark = f" {BEST}" if typ in best.get(pair, ()) else ""
            row.append(f"{cell(vals)}{mark} / {pub}" + (f" ({gap:+.2f})" if gap is not None else ""))
            long.append([family, label, pair, _num(mean), _num(std), n, _num(pval), _num(gap),
                         "yes" if mark else "", src])
            if src:
                sources.setdefault(label, {})[src] = True
            if note := entry_note(label, pair, entry):
                entry_notes.append(note)
        rows.append(row)
    planned = len(study.spec.get("seeds") or [])
    unpaired = sorted(s for s in alone if s not in students.values())
    notes.append(f"Cells: ours as mean ± std (n) over seeds / the published number (ours - published); "
                 f"ours = {epoch_label(epoch)}; {BEST} = the best of ours in the column (the student alone "
                 f"excluded; ties marked each); '-' = no result. Planned seeds per cell: {planned}; a cell with "
                 "fewer shows its n.")
    members: dict[str, list[str]] = {}
    for typ in types:
        label, family = method_info(typ)
        if family != "none":
            members.setdefault(FAMILY_TITLE.get(family, family), []).append(label)
    notes.append("Groups, as each distiller declares its own: "
                 + "; ".join(f"{g}: {', '.join(m)}" for g, m in members.items())
                 + " (features and their relations; logits; spatial attention and class activation maps).")
    for label, srcs in sources.items():
        notes.append(f"{label} published numbers: {'; '.join(srcs)}.")
    notes += entry_notes
    if unpaired:
        notes.append(f"Students trained alone without a distillation pair in this study (not shown): {', '.join(unpaired)}.")
    notes.append(f"Published: {paper.get('dataset', '')}.")
    tables = [Table("main_results", f"{study.name}: CIFAR-100 top-1, every method x pair ({stage})",
                    ["group", "method", *pairs], rows, notes),
              Table("main_results_cells", f"{study.name}: the same cells, one per row",
                    ["group", "method", "pair", "mean", "std", "n", "published", "gap", "best of ours", "source"],
                    long, [f"Ours: {epoch_label(epoch)}."], formats=("csv",))]
    diff_rows = []
    for pair in pairs:
        if not ours("CAT_KD", pair):
            continue
        others = {t: stats(ours(t, pair))[0] for t in types if t not in ("CAT_KD", ALONE)}
        strongest = max((t for t, m in others.items() if m is not None), key=lambda t: others[t], default=None)
        for other in dict.fromkeys([ALONE, "KD", "DKD", strongest]):
            if other is None or not ours(other, pair):
                continue
            pa, pb = published(pub_entry("CAT_KD", pair))[1], published(pub_entry(other, pair))[1]
            label = f"CAT-KD - {method_info(other)[0]}" + (" (strongest other of ours)" if other == strongest else "")
            diff_rows.append([pair] + difference_row(label, ours("CAT_KD", pair), ours(other, pair),
                                                     None if pa is None or pb is None else pa - pb))
    if diff_rows:
        tables.append(Table("main_results_differences",
                            f"{study.name}: CAT-KD minus other methods on the same pair, {epoch_label(epoch)}",
                            ["teacher->student"] + DIFF_HEADERS, diff_rows,
                            ["95 % confidence interval of the difference of means over seeds (Welch's t); "
                             "n = 1 on a side gives no interval. 'published inside our CI': does the "
                             "difference of the published numbers fall inside it. The strongest other method "
                             "is the one with the highest mean of ours on that pair (picking the strongest "
                             "rival can only make CAT-KD's difference smaller)."]))
    return tables


def _num(v: Optional[float]) -> Any:
    return "" if v is None else round(float(v), 4)
