"""Transferability: students trained on CIFAR-100, probed linearly on STL-10 and TinyImageNet. One row
per source method (per source pair), one column per target dataset, mean ± std over the source
students (one per source seed); and CAT-KD's difference from each other method of its pair."""
from __future__ import annotations

import re
from typing import Any

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row
from analysis.layouts.common import FAMILIES, ablation_note, method_info
from analysis.layouts.registry import layout
from analysis.load import Study
from analysis.selection import epoch_label, rows_to_report, value_column

TARGET = "DATASET.TYPE"
METHOD, PAIR, SEED = "TRANSFER.SOURCE_METHOD", "TRANSFER.SOURCE_PAIR", "TRANSFER.SOURCE_SEED"
SETTINGS = "TRANSFER.SOURCE_SETTINGS"  # what else tells a group of source students apart
TARGET_NAMES = {"stl10": "STL-10", "tiny_imagenet": "TinyImageNet"}


def method_label(typ: str) -> str:
    return "CAT (alone)" if typ == "CAT" else method_info(typ)[0]


def _natural(text: str) -> list:
    """teacher_epoch=6 before teacher_epoch=12."""
    return [(0, int(w), "") if w.isdigit() else (1, 0, w) for w in re.split(r"(\d+)", text)]


def _label(typ: str, extra: str) -> str:
    return f"{method_label(typ)} ({extra})" if extra else method_label(typ)


def _rank(typ: str) -> tuple:
    family = "attention/CAM" if typ == "CAT" else method_info(typ)[1]
    order = ("none", *FAMILIES)
    return (order.index(family) if family in order else len(order), method_label(typ).lower())


@layout("transfer")
def transfer(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    missing = [c for c in (TARGET, METHOD, PAIR) if c not in trials]
    if missing or trials.empty:
        return [Table("transfer", f"{study.name}: no probe results yet", ["method"], [], notes)]
    targets = sorted(trials[TARGET].dropna().unique(), key=lambda t: (t not in TARGET_NAMES, str(t)))
    if SETTINGS not in trials:
        trials = trials.assign(**{SETTINGS: ""})
    # one group per source method, pair and other settings: only the source seeds are pooled
    cells: dict[tuple[str, str, str], dict[str, list]] = {}
    for (pair, typ, extra, target), g in trials.fillna({SETTINGS: ""}).groupby([PAIR, METHOD, SETTINGS, TARGET], sort=False):
        cells.setdefault((str(pair), str(typ), str(extra)), {})[str(target)] = g[value].tolist()
    order = sorted(cells, key=lambda k: (k[0].endswith(" alone"), k[0], _rank(k[1]), _natural(k[2])))
    rows = [[pair, _label(typ, extra)] + [cell(cells[(pair, typ, extra)].get(t, [])) for t in targets]
            for pair, typ, extra in order]
    if study.smoke:
        notes.append("SYNTHETIC/SMOKE: students trained on the synthetic data, probed on small generated files in "
                     "the STL-10 and TinyImageNet formats; not the paper's data.")
    notes.append("Each cell: mean ± std (n) over the source students, one per source seed; each student's final "
                 "epoch, its backbone frozen, a new linear classifier trained on the target data.")
    if not study.smoke:
        notes.append(ablation_note(paper, "transfer"))
    main = Table("transfer", f"{study.name}: linear probe top-1 on the target data, {epoch_label(epoch)}",
                 ["source pair", "method", *[TARGET_NAMES.get(t, t) for t in targets]], rows, notes)
    diffs = []
    for pair, typ, extra in order:
        if typ != "CAT_KD":
            continue
        alone = f"{pair.split('->')[-1]} alone"
        others = [k for k in order if k[1] != "CAT_KD" and ((k[0] == pair and k[2] == extra) or k[0] == alone)]
        for other in others:
            for t in targets:
                diffs.append([pair, TARGET_NAMES.get(t, t)] + difference_row(
                    f"{_label('CAT_KD', extra)} - {_label(other[1], other[2])}",
                    cells[(pair, typ, extra)].get(t, []), cells[other].get(t, [])))
    out = [main]
    if diffs:
        out.append(Table("transfer_differences", f"{study.name}: CAT-KD minus each other method, per target",
                         ["source pair", "target", *DIFF_HEADERS], diffs,
                         ["Welch 95 % interval over the source students; no published differences."]))
    return out
