"""The table layout of each kind of study (chosen by the study file's `report:` key, defaulting from
the shipped study names): β sweep, CAM resolution, binarization, partial CAMs, data reduction, the
main CIFAR-100 table, teachers, and a generic table over the varied settings."""
from __future__ import annotations

from typing import Any, Callable, Optional

import pandas as pd

from analysis.cells import DIFF_HEADERS, Table, cell, difference_row, fmt, sortkey, stats
from analysis.load import Study, classes_of, varied_columns
from analysis.names import (
    BETA, BIN, CLASSES, NUMS, ONLY_CAT, PARTIAL, RATE, RES, STRATEGY, STUDENT, TEACHER, TYPE,
)
from analysis.names import DISPLAY
from analysis.selection import Group, epoch_label, groups, rows_to_report, select_metric, value_column
from catkd.study.results import finite

B, R = DISPLAY[BETA], DISPLAY[RES]  # how the tables show β and the CAM resolution


def pivot(gs: list[Group], value: str, row_of: Callable[[Group], tuple], col_of: Callable[[Group], Any],
          row_headers: list[str], name: str, title: str, col_sort: Optional[Callable] = None) -> Table:
    """Rows x columns of `mean ± std (n)` cells (several groups landing in one cell are pooled)."""
    long = pd.DataFrame([{"row": row_of(g), "col": col_of(g), "v": v}
                         for g in gs for v in g.trials[value].tolist()], columns=["row", "col", "v"])
    if long.empty:
        return Table(name, title, row_headers, [])
    wide = long.pivot_table(index="row", columns="col", values="v", aggfunc=lambda v: cell(v),
                            dropna=False, sort=False)
    cols = sorted(wide.columns, key=col_sort or sortkey)
    index = sorted(wide.index, key=lambda r: tuple(sortkey(x) for x in r))
    present = set(zip(long["row"], long["col"]))
    rows = [[fmt(x) for x in r] + [wide.at[r, c] if (r, c) in present else "-" for c in cols] for r in index]
    return Table(name, title, row_headers + [fmt(c) for c in cols], rows)


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


def beta_sweep(study: Study, epoch: str, paper: dict[str, Any]) -> list[Table]:
    value = value_column(epoch)
    t = study.trials
    stage = t["stage"] if "stage" in t else pd.Series(["search"] * len(t), index=t.index)
    search, confirm = t[stage != "confirm"], t[stage == "confirm"]
    gs = groups(search)
    gs.sort(key=lambda g: (sortkey(g.get(BETA)), sortkey(g.get(RES))))
    rows = []
    for g in gs:
        rows.append([fmt(g.get(BETA)), fmt(g.get(RES)), ", ".join(sorted(set(g.trials["status"]))),
                     int(g.trials["epochs_done"].max()), cell(g.trials["best_val_acc"]), cell(g.trials[value]),
                     fmt(_loss_cat_epoch1(study, g.trials))])
    headers = [B, R, "status", "epochs", "val top-1 % (best)", epoch_label(epoch), "β·L_CAT epoch 1"]
    tables = [Table("beta_sweep_search", f"{study.name}: β vs top-1, search trials (sorted by β)", headers, rows)]
    notes: list[str] = []
    select = select_metric(study)
    if len(confirm):
        cg = groups(confirm)
        # the configuration is chosen by validation (never by the test accuracy it reports)
        best = max(cg, key=lambda g: stats(g.trials[select])[0] or -1)
        crow = [[fmt(g.get(BETA)), fmt(g.get(RES)), cell(g.trials[select]), cell(g.trials[value])]
                for g in sorted(cg, key=lambda g: -(stats(g.trials[select])[0] or -1))]
        tables.append(Table("beta_sweep_confirm", f"{study.name}: confirm stage (new seeds; sorted by {select})",
                            [B, R, "val top-1 % (best)" if select == "best_val_acc" else select,
                             epoch_label(epoch)], crow))
        where = f"confirm stage, chosen by mean {select}"
        best_trials = best.trials
        # β·L_CAT of the same configuration in the search stage (the confirm runs have it too)
    else:
        if study.spec.get("confirm"):
            notes.append("Tuned on validation, but there are no confirm rows yet: the best β is "
                         "chosen among the search trials.")
        best = max(gs, key=lambda g: stats(g.trials[select])[0] or -1) if gs else None
        where = f"search stage, chosen by {select}"
        best_trials = best.trials if best else None
    if best is not None:
        lc = _loss_cat_epoch1(study, best_trials)
        lo, hi = (paper.get("advice", {}).get("beta_times_lcat", {}).get("range") or [None, None])
        src = paper.get("advice", {}).get("beta_times_lcat", {}).get("source", "")
        inside = "unknown (no loss_cat at epoch 1)" if lc is None or lo is None else \
            ("yes" if lo <= lc <= hi else "no")
        tables.append(Table("beta_sweep_best", f"{study.name}: best β ({where})",
                            [B, R, epoch_label(epoch), "mean β·L_CAT at epoch 1",
                             f"inside advised {lo}..{hi} ({src})"],
                            [[fmt(best.get(BETA)), fmt(best.get(RES)), cell(best_trials[value]),
                              fmt(lc), inside]], notes))
    return tables


def _loss_cat_epoch1(study: Study, trials: pd.DataFrame) -> Optional[float]:
    e = study.epochs
    if e.empty or "loss_cat" not in e or "trial_id" not in e:
        return None
    sel = e[(e["trial_id"].isin(trials["trial_id"])) & (e["epoch"] == 1)]
    mean, _, n = stats(sel["loss_cat"])
    return mean if n else None


def cam_resolution(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (), lambda g: g.get(RES), [],
              "cam_resolution", f"{study.name}: CAM resolution R vs {epoch_label(epoch)}")
    t.headers = [f"{R} = {h}" for h in t.headers]
    t.notes = notes
    return [t]


def binarization(study: Study, epoch: str, paper: Optional[dict[str, Any]] = None) -> list[Table]:
    trials, stage, notes = rows_to_report(study)
    value = value_column(epoch)
    t = pivot(groups(trials), value, lambda g: (bool(g.get(BIN)), g.get(BETA)), lambda g: g.get(RES),
              [DISPLAY[BIN], B], "binarization", f"{study.name}: binarize x R, {epoch_label(epoch)}")
    t.headers = t.headers[:2] + [f"{R} = {h}" for h in t.headers[2:]]
    t.notes = notes
    tables = [t]
    by: dict[tuple, list] = {}
    for g in groups(trials):
        by.setdefault((bool(g.get(BIN)), g.get(RES)), []).extend(g.trials[value].tolist())
    rows = [[fmt(r)] + difference_row("binarized - not binarized", by[(True, r)], by[(False, r)])
            for r in sorted({r for _, r in by}, key=sortkey) if (True, r) in by and (False, r) in by]
    if rows:
        tables.append(Table("binarization_differences", f"{study.name}: binarized - not binarized at each R, "
                            f"{epoch_label(epoch)}", [R] + DIFF_HEADERS, rows,
                            ["95 % Welch interval over seeds; the paper gives no number for this difference."]))
    return tables


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
    t.notes = notes
    return [t]


def method_of(g: Group | dict) -> str:
    typ = g.get(TYPE)
    if typ == "CAT_KD":
        return "CAT (alone)" if g.get(ONLY_CAT) else "CAT-KD"
    if typ in (None, "NONE"):
        return "student alone"
    return str(typ)  # KD, DKD


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
    t.notes = notes
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
                            ["95 % Welch interval over seeds; the paper gives no numbers for these differences."]))
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


def pair_of(g: Group | dict) -> str:
    return f"{g.get(TEACHER)}->{g.get(STUDENT)}"


def _published(entry: Optional[dict]) -> tuple[str, Optional[float], str]:
    if not entry or "top1" not in entry:
        return "-", None, ""
    return f"{entry['top1']:.2f}", float(entry["top1"]), entry.get("source", "")


# The main table's methods, left to right, by DISTILLER.TYPE (None: the student trained alone).
MAIN_METHODS = [(None, "student alone"), ("KD", "KD"), ("DKD", "DKD"), ("CAT_KD", "CAT-KD")]


def _ours_published_gap(ours: list, entry: Optional[dict]) -> list[str]:
    """[ours as mean ± std (n), the published value, ours - published]."""
    pub, pval, _ = _published(entry)
    mean, _, n = stats(ours)
    gap = f"{mean - pval:+.2f}" if n and pval is not None else "-"
    return [cell(ours), pub, gap]


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
        row = [pair, _published(vanilla_pub.get(teacher))[0]]
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
            return _published(e)[1]

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
        pub, pval, src = _published(vanilla_pub.get(model))
        mean, _, n = stats(vals)
        rows.append([model, cell(vals), pub, f"{mean - pval:+.2f}" if n and pval is not None else "-", src or "-"])
    return [Table("teachers", f"{study.name}: models trained alone, {epoch_label(epoch)}",
                  ["model", "ours", "published", "gap (ours - published)", "source"], rows, notes)]


# layout name (the study file's `report:` key) -> the function that builds its tables
LAYOUTS = {
    "beta_sweep": beta_sweep, "cam_resolution": cam_resolution, "binarization": binarization,
    "partial_cams": partial_cams, "data_reduction": data_reduction, "main_results": main_results,
    "teachers": teachers, "generic": generic,
}


def layout_of(study: Study) -> str:
    """The study file's `report:` key, else the layout named like the study, else generic."""
    chosen = study.spec.get("report")
    if chosen:
        return chosen if chosen in LAYOUTS else "generic"
    return study.name if study.name in LAYOUTS else "generic"
