"""Weak teachers: one student distilled (KD, CAT-KD) from teachers of increasing accuracy, the student's
gain over the student trained alone against the teacher's own test top-1 (measured by each run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row, welch
from analysis.layouts.common import ablation_note, method_info
from analysis.layouts.registry import figure, layout
from analysis.load import Study
from analysis.names import TYPE
from analysis.selection import epoch_label, resolve_epoch, rows_to_report, value_column

EPOCH = "DISTILLER.TEACHER_EPOCH"
TEACHER_ACC = "teacher_test_acc"


def points(study: Study, epoch: str) -> tuple[list, dict[str, list[dict[str, Any]]]]:
    """(the student alone's values, {method: [{teacher epoch, teacher acc, values, gain, ci}, ...]})."""
    trials, _, _ = rows_to_report(study)
    value = value_column(epoch)
    typ = trials[TYPE].astype(str) if TYPE in trials else pd.Series(dtype=str)
    alone = trials[typ == "NONE"][value].tolist()
    out: dict[str, list[dict[str, Any]]] = {}
    distilled = trials[typ != "NONE"]
    if distilled.empty or EPOCH not in distilled:
        return alone, out
    for (method, ep), g in distilled.groupby([TYPE, EPOCH], sort=True):
        vals = g[value].tolist()
        diff, ci, _, _ = welch(vals, alone)
        acc = pd.to_numeric(g.get(TEACHER_ACC), errors="coerce").mean() if TEACHER_ACC in g else np.nan
        out.setdefault(str(method), []).append({"epoch": int(ep), "teacher_acc": float(acc), "values": vals,
                                                "gain": diff, "ci": ci})
    return alone, out


@layout("weak_teachers")
def weak_teachers(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    _, _, notes = rows_to_report(study)
    alone, by_method = points(study, epoch)
    methods = sorted(by_method, key=lambda m: method_info(m)[0])
    epochs = sorted({p["epoch"] for ps in by_method.values() for p in ps})

    def at(m: str, e: int) -> Optional[dict]:
        return next((p for p in by_method[m] if p["epoch"] == e), None)

    rows = []
    for e in epochs:
        accs = [p["teacher_acc"] for m in methods if (p := at(m, e)) and np.isfinite(p["teacher_acc"])]
        row = [e, f"{np.mean(accs):.2f}" if accs else "-"]
        for m in methods:
            p = at(m, e)
            row += [cell(p["values"]) if p else "-", f"{p['gain']:+.2f}" if p and p["gain"] is not None else "-"]
        rows.append(row)
    headers = ["teacher epoch", "teacher top-1"]
    for m in methods:
        headers += [method_info(m)[0], f"{method_info(m)[0]} gain"]
    notes.append(f"Student alone: {cell(alone)}. Gain: the student's mean minus the student alone's mean. The teacher's "
                 "top-1 is measured by each run on the test set it is tested on (the checkpoint's own record is not used).")
    notes.append(ablation_note(paper, "weak_teachers", study.smoke))
    diffs = [[e, *difference_row(f"{method_info(m)[0]} - student alone", at(m, e)["values"], alone)]
             for e in epochs for m in methods if at(m, e)]
    return [Table("weak_teachers", f"{study.name}: the student's top-1 by teacher strength, {epoch_label(epoch)}",
                  headers, rows, notes),
            Table("weak_teachers_gains", f"{study.name}: each method minus the student alone, per teacher",
                  ["teacher epoch", *DIFF_HEADERS], diffs, ["Welch 95 % interval over the seeds."])]


@figure("weak_teachers")
def gain_vs_teacher(study: Study, out_dir: Path, epoch: str) -> Optional[Path]:
    """The student's gain over the student alone (95 % Welch interval) against the teacher's top-1."""
    from analysis.plots import _save, _title, plt

    epoch = resolve_epoch(study, epoch)
    alone, by_method = points(study, epoch)
    if not by_method or not alone:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, marker in zip(sorted(by_method, key=lambda m: method_info(m)[0]), "osd^v"):
        ps = sorted((p for p in by_method[m] if p["gain"] is not None and np.isfinite(p["teacher_acc"])),
                    key=lambda p: p["teacher_acc"])
        if not ps:
            continue
        x = np.array([p["teacher_acc"] for p in ps])
        y = np.array([p["gain"] for p in ps])
        lo = np.array([p["gain"] - p["ci"][0] if p["ci"] else 0.0 for p in ps])
        hi = np.array([p["ci"][1] - p["gain"] if p["ci"] else 0.0 for p in ps])
        ax.errorbar(x, y, yerr=[lo, hi], marker=marker, capsize=3, label=method_info(m)[0])
    ax.axhline(0.0, color="grey", ls="--", lw=1, label=f"student alone ({np.mean(alone):.2f})")
    ax.set_xlabel("teacher's test top-1 % (measured)")
    ax.set_ylabel(f"student gain over alone, points\n{epoch_label(epoch)}", fontsize=8)
    ax.set_title(_title(study, "gain from teachers of increasing accuracy"), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="95 % Welch interval", title_fontsize=7)
    return _save(fig, Path(out_dir) / "gain_vs_teacher.png")
